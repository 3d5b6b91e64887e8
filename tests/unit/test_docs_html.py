"""``oprunner docs --html``: browsable pages made from the specs, with everything escaped."""

from __future__ import annotations

from pathlib import Path

from runner import IO, Meta, Model, OperationRegistry, Policy, define_command, install_op
from runner.docs import write_docs
from runner.docs_html import PAGES, html_pages
from runner.settings import Settings


class Input(Model):
    text: str


Hostile = define_command(
    meta=Meta(key="notes.add", version="1.0.0", description="Add <script>alert(1)</script> a note"),
    io=IO(input=Input, output=Input, errors={"TOO_LONG": "more than <b>1 KB</b>"}),
    policy=Policy(auth="user"),
)


async def add(value: Input, ctx: object) -> Input:
    return value


def registry() -> OperationRegistry:
    r = OperationRegistry()
    install_op(r, Hostile, add)
    return r


def test_every_page_is_made_and_what_a_spec_says_is_escaped() -> None:
    pages = html_pages(registry(), Settings(_env_file=None))
    assert set(pages) == set(PAGES)
    for text in pages.values():
        assert "<script>" not in text and "<b>" not in text  # escaped wherever a spec's text goes
        assert 'href="console.css"' in text and "http://" not in text and "https://" not in text
    assert "Add &lt;script&gt;alert(1)&lt;/script&gt; a note" in pages["catalog.html"]
    assert "TOO_LONG: more than &lt;b&gt;1 KB&lt;/b&gt;" in pages["catalog.html"]
    assert "POST /ops/notes.add" in pages["http.html"] and "ops.commands" in pages["topics.html"]


def test_docs_html_writes_the_pages_beside_the_json(tmp_path: Path) -> None:
    written = write_docs(registry(), Settings(_env_file=None), tmp_path, stylesheet="body {}")
    names = {p.name for p in written}
    assert set(PAGES) | {"console.css", "openapi.json", "asyncapi.json", "catalog.md"} <= names
    assert (tmp_path / "console.css").read_text() == "body {}"
    assert {p.name for p in write_docs(registry(), Settings(_env_file=None), tmp_path / "plain")}.isdisjoint(
        PAGES
    )
