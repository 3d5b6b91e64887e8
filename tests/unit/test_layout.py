"""The layout's import rules (DESIGN.md, "Layout"), read from the code: the engine imports no
app and no transport, and reaches ``infra/`` only from its composition roots."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TRANSPORTS = {"aiokafka", "faststream", "starlette", "uvicorn", "h11", "asyncpg", "stripe", "httpx"}
"""Broker, web, database and provider libraries."""
COMPOSITION_ROOTS = ("runner/cli/",)
"""Where the engine is wired to infra/ (serve, dev, tail) and may use transports."""
CLIENT = ("runner/client.py",)
"""The producer client: it talks Kafka by nature."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("runner"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_imports_no_app_and_no_transport(path: Path) -> None:
    where = str(path.relative_to(ROOT))
    imported = _imports(path)
    assert not imported & {"specs", "handlers"}, f"{where} imports an app"
    if where.startswith(COMPOSITION_ROOTS):
        return
    assert "infra" not in imported, f"{where} reaches infra/ outside the composition root"
    if where not in CLIENT:
        assert not imported & TRANSPORTS, f"{where} imports {sorted(imported & TRANSPORTS)}"


@pytest.mark.parametrize("path", _files("specs"), ids=lambda p: str(p.relative_to(ROOT)))
def test_specs_import_only_the_engine(path: Path) -> None:
    imported = _imports(path) - {"__future__", "decimal", "datetime", "typing", "enum", "pydantic"}
    assert imported <= {"runner", "specs"}, f"{path.relative_to(ROOT)} imports {sorted(imported)}"


@pytest.mark.parametrize("path", _files("infra"), ids=lambda p: str(p.relative_to(ROOT)))
def test_infra_serves_any_app_and_names_none(path: Path) -> None:
    assert not _imports(path) & {"specs", "handlers"}, f"{path.relative_to(ROOT)} imports an app"
