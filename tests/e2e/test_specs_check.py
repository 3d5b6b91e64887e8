"""``oprunner specs check`` as CI runs it: the repository's own app against its lock file, and
a spec change caught with one line and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

APP = """
from runner import IO, Meta, Model, OperationRegistry, Policy, define_command, install_op

class In(Model):
    invoice_id: str
    amount: int

class Out(Model):
    ok: bool

async def handle(value, ctx):
    return {"ok": True}

registry = OperationRegistry()
install_op(registry, define_command(
    meta=Meta(key="billing.charge", version="1.0.0", description="t"),
    io=IO(input=In, output=Out), policy=Policy(auth="public")), handle)
"""


def specs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPRUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "runner", "specs", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_repository_checks_its_own_app_and_a_spec_change_is_caught(tmp_path: Path) -> None:
    own = specs("check", cwd=ROOT)
    assert own.returncode == 0, own.stdout + own.stderr
    assert own.stdout.startswith("no breaking changes against oprunner.lock.json (")

    (tmp_path / "charge_app.py").write_text(APP)
    locked = specs("lock", "--app", "charge_app:registry", cwd=tmp_path)
    assert locked.returncode == 0 and (tmp_path / "oprunner.lock.json").is_file(), locked.stderr
    (tmp_path / "charge_app.py").write_text(
        APP.replace("amount: int", "amount: int = Field(le=100)", 1).replace(
            "from runner", "from pydantic import Field\nfrom runner", 1
        )
    )
    changed = specs("check", "--app", "charge_app:registry", cwd=tmp_path)
    assert (changed.returncode, changed.stdout) == (
        1,
        "billing.charge 1.0.0: input.amount: maximum 100 added\n",
    )
    missing = specs("check", "--app", "charge_app:registry", "--lock", "gone.json", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("oprunner: cannot read gone.json")
