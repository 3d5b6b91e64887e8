"""The console in a real browser (Debian's chromium, driven by Playwright), as an operator
uses it: sign in, send a command from an operation's form, watch it arrive live in the runs
list, open it, filter, and replay a dead letter as an admin; on a laptop and on a phone, by
mouse and by keyboard. A screenshot of each page goes to ``docs/console/`` (the README shows
them). Any script error or Content-Security-Policy violation fails the test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support import Reader, ServeProcess, Topics, auth, produce, seed_ledger, token

CHROMIUM = os.environ.get("OPRUNNER_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
ALICE = token("alice", tenant="t1")
ADMIN = token("ops", kind="admin")
XSS = '<img src=x onerror="window.pwned=1">'


@pytest.fixture
def chromium() -> str:
    """Debian's chromium. Missing, the test is skipped with the line that installs it, unless
    ``OPRUNNER_REQUIRE_BROWSER=1`` (``.ci/run`` installs it and sets that: there it must run)."""
    if not Path(CHROMIUM).exists():
        missing = f"no browser at {CHROMIUM}: apt-get update && apt-get install -y chromium"
        assert os.environ.get("OPRUNNER_REQUIRE_BROWSER") != "1", missing
        pytest.skip(missing)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        await browser.close()


@pytest.fixture
async def server(topics: Topics, database_url: str, serving: Any, clean_db: asyncpg.Pool) -> ServeProcess:
    await seed_ledger(clean_db, [("a1", "alice", "t1"), ("b1", "bob", "t1")])
    return serving(topics, database_url)  # type: ignore[no-any-return]


async def page_for(browser: Browser, server: ServeProcess, problems: list[str], **options: Any) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    page = await context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    expected = "Failed to load resource: the server responded with a status of 403"  # alice at /ops/dlq

    def console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith(expected):  # CSP violations land here
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", console)
    await page.goto(server.url + "/console")
    return page


async def sign_in(page: Page, jwt: str) -> None:
    await page.fill("#token", jwt)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#who")).not_to_be_empty()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_sends_watches_inspects_filters_and_replays(
    browser: Browser, server: ServeProcess, topics: Topics, kafka_bootstrap: str
) -> None:
    problems: list[str] = []
    # a dead letter for the admin to replay later: bytes that are no command, sent by the admin
    await produce(
        kafka_bootstrap, topics.commands, [(b"x", b"\xffnot json", auth("ops", kind="admin", tenant=None))]
    )
    page = await page_for(browser, server, problems)
    headers = await page.context.request.get(server.url + "/console")
    assert "script-src 'self'" in headers.headers["content-security-policy"]
    await expect(page.locator("#signin")).to_be_visible()
    await sign_in(page, ALICE)
    assert await page.evaluate("location.href.includes('ey')") is False  # the token is in no URL

    # an operation's contract and its form: send a credit, see the outcome
    await page.click("nav a[data-view=specs]")
    await page.click("text=ledger.credit")
    await expect(page.locator("h3", has_text="ledger.credit 1.0.0")).to_be_visible()
    await page.fill("#command-input", '{"accountId": "a1", "amount": "2.50"}')
    await page.click("#send-form button[type=submit]")
    await expect(page.locator("#send-result")).to_contain_text("succeeded")
    await shot(page, "operation")

    # the run's page: the input as audited, the trail, attempts
    await page.click("#send-result a")
    await expect(page.locator("h2", has_text="Run ")).to_be_visible()
    await expect(page.locator(".audit-entry")).to_have_count(1)
    await expect(page.locator(".audit-entry pre")).to_contain_text('"accountId": "a1"')
    await expect(page.locator("dl.facts")).to_contain_text("attempts1")
    await shot(page, "run")

    # the runs list, live: a command sent elsewhere appears without a reload
    await page.click("nav a[data-view=runs]")
    await expect(page.locator("#live")).to_have_text("● live")
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        sent = await http.post(
            "/ops/ledger.credit",
            json={"accountId": "a1", "amount": "1"},
            headers={"authorization": f"Bearer {ALICE}"},
        )
        denied = await http.post(  # with markup where the page shows the correlation id
            "/ops/ledger.credit",
            json={"accountId": "b1", "amount": "1"},
            headers={"authorization": f"Bearer {ALICE}", "x-correlation-id": XSS},
        )
    await expect(page.locator(f'tr[data-command="{sent.json()["commandId"]}"]')).to_be_visible()
    await expect(page.locator(f'tr[data-command="{denied.json()["commandId"]}"]')).to_contain_text("denied")
    await expect(page.locator("#runs-body tr")).to_have_count(3)
    await shot(page, "runs")

    # the overview: outcomes counted from /metrics, charts drawn
    await page.click("nav a[data-view=overview]")
    await expect(page.locator("#outcomes")).to_contain_text("succeeded2")
    await expect(page.locator("#outcomes")).to_contain_text("denied1")
    await expect(page.locator("#handler-time")).to_contain_text("p50 ≤")
    await expect(page.locator("#overview svg polyline")).to_have_count(3)
    await expect(page.locator("#lag")).to_contain_text("messages")
    await shot(page, "overview")
    await page.click("nav a[data-view=runs]")

    # filter: the denied one only; then open it by keyboard
    await page.select_option("#f-status", "denied")
    await page.click("#run-filters button[type=submit]")
    await expect(page.locator("#runs-body tr")).to_have_count(1)
    await page.focus("#runs-body tr")
    await page.keyboard.press("Enter")
    await expect(page.locator("dl.facts")).to_contain_text("denied")
    await expect(page.locator(".audit-entry")).to_contain_text("not allowed to credit this account")
    await expect(page.locator("dl.facts")).to_contain_text(XSS)  # shown as text, never run
    assert await page.evaluate("window.pwned === undefined && !document.querySelector('#view img')")
    # a denied caller's input is not kept, and the page says so rather than show a blank
    await expect(page.locator(".audit-entry .redacted")).to_contain_text("withheld (denied): 31 bytes")

    # on a phone: the list still fits the screen's width
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.click("nav a[data-view=runs]")
    await expect(page.locator("#runs-body tr")).to_have_count(3)
    await shot(page, "runs-phone")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.set_viewport_size({"width": 1280, "height": 800})

    # the docs pages, linked from the console, made from the served app's specs
    await page.click("nav a[href='/docs/']")
    await page.click("text=Operations")
    await expect(page.locator("h3", has_text="ledger.credit 1.0.0")).to_be_visible()
    await shot(page, "docs")
    await page.click("nav a[href='http.html']")
    await expect(page.locator("h3", has_text="POST /ops/ledger.credit")).to_be_visible()
    await page.goto(server.url + "/console#/runs")  # the token is still this tab's
    await expect(page.locator("#who")).to_contain_text("alice")

    # alice is no admin: the dead letters are not hers to see
    await page.click("nav a[data-view=dlq]")
    await expect(page.locator("#view .error")).to_contain_text("admins")

    # the admin signs in, sees the dead letter with its reason, and replays it
    await page.click("#sign-out")
    await sign_in(page, ADMIN)
    await page.click("nav a[data-view=dlq]")
    row = page.locator("#view tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("MALFORMED")
    await shot(page, "dlq")
    await row.locator("input[type=checkbox]").check()
    await page.click("#replay")
    await expect(page.locator("#replay-result")).to_have_text("Replayed 1; cut short 0; not found 0.")
    async with Reader(kafka_bootstrap, topics.dlq) as dlq:  # replayed, still malformed: dead-lettered again
        await dlq.until(lambda ms: len(ms) >= 2, timeout=30)
    assert problems == [], problems
