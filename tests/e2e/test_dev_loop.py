"""``oprunner dev`` as a developer's loop, on an app in its own folder: its state is kept
between runs (same ports, same secret and token, same database) until ``--reset``; it logs
one line per command; ``--reload`` serves the edited code without restarting the services."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.devservices import port_open
from tests.e2e.test_apps import HOOK_SECRET, notes_app  # noqa: F401  (the fixture)
from tests.support import ROOT

READY_WITHIN = 90.0


class Dev:
    """One ``oprunner dev`` process, its output in files so nothing blocks on a pipe."""

    def __init__(self, folder: Path, state: Path, *args: str) -> None:
        self.out, self.err = folder / "dev.out", folder / "dev.err"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPRUNNER_")}
        env = {**clean, "NOTES_HOOK_SECRET": HOOK_SECRET, "PYTHONPATH": str(ROOT)}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "dev", "notes:app", "--state-dir", str(state), *args],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.state = state
        self.wait_for(lambda: "Try:" in self.stdout(), "the banner")
        self.env = dict(
            line.removeprefix("export ").split("=", 1) for line in (state / "env").read_text().splitlines()
        )
        self.env = {k: shlex.split(v)[0] for k, v in self.env.items()}
        self.url = f"http://127.0.0.1:{self.env['OPRUNNER_HTTP_PORT']}"

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, done: Any, what: str, timeout: float = READY_WITHIN) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            code = self.proc.poll()
            assert code is None, f"dev exited {code} before {what}: {self.stdout()} {self.stderr()}"
            assert time.monotonic() < deadline, (
                f"no {what} within {timeout}s: {self.stdout()} {self.stderr()}"
            )
            time.sleep(0.1)

    def add(self, text: str) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/ops/notes.add",
            json={"text": text},
            headers={"authorization": f"Bearer {self.env['OPRUNNER_TOKEN']}"},
            timeout=20,
        )
        return dict(r.json())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # dev dumps its threads' stacks to stderr
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
            raise AssertionError(
                f"dev did not stop on SIGINT: {self.stdout()[-2000:]} {self.stderr()[-6000:]}"
            ) from None


@pytest.fixture
def folder(notes_app: Path) -> Iterator[Path]:  # noqa: F811
    """The notes app in a folder any user can walk down to, so the kept database lives in
    its state dir (under pytest's own temp dir, Postgres's user could not reach it)."""
    home = Path(tempfile.mkdtemp(prefix="oprunner-devloop-", dir="/tmp"))
    shutil.copytree(notes_app, home, dirs_exist_ok=True)
    home.chmod(0o755)  # after the copy, which gives it pytest's 0700
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def started(folder: Path) -> Iterator[list[Dev]]:
    """Every dev a test starts is stopped at its end: Ctrl-C first, so it stops its services."""
    devs: list[Dev] = []
    yield devs
    for dev in devs:
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGINT)
            try:
                dev.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(dev.proc.pid, signal.SIGKILL)
                dev.proc.wait(10)
                Dev(folder, dev.state).stop()  # the next dev stops what the killed one left running


def test_dev_keeps_its_state_between_runs_until_reset(folder: Path, started: list[Dev]) -> None:
    state = folder / ".oprunner"
    first = Dev(folder, state)
    started.append(first)
    assert "(new;" in first.stdout() and "export OPRUNNER_TOKEN=" in first.stdout()
    added = first.add("hello")
    assert added["status"] == "succeeded", added
    first.wait_for(lambda: "notes.add succeeded" in first.stderr(), "the command's log line")
    assert f"[{added['commandId']}]" in first.stderr() and "ms" in first.stderr()
    assert (state / "env").stat().st_mode & 0o077 == 0  # the secret is its owner's only
    assert first.stop() == 0
    assert not port_open(int(first.env["OPRUNNER_HTTP_PORT"]))  # everything stopped

    again = Dev(folder, state)
    started.append(again)
    assert "kept from the last run" in again.stdout()
    same = ("OPRUNNER_JWT_SECRET", "OPRUNNER_TOKEN")  # the ports too while free; not asserted
    assert {k: again.env[k] for k in same} == {k: first.env[k] for k in same}
    run = httpx.get(
        f"{again.url}/ops/runs/{added['commandId']}",
        headers={"authorization": f"Bearer {again.env['OPRUNNER_TOKEN']}"},
        timeout=20,
    )
    assert run.status_code == 200 and run.json()["status"] == "succeeded"  # the same database
    assert again.add("second")["output"]["id"] == 2
    assert again.stop() == 0

    fresh = Dev(folder, state, "--reset")
    started.append(fresh)
    assert "(new;" in fresh.stdout() and fresh.env["OPRUNNER_JWT_SECRET"] != first.env["OPRUNNER_JWT_SECRET"]
    assert fresh.add("after reset")["output"]["id"] == 1  # an empty database
    assert fresh.stop() == 0


def test_reload_serves_the_edited_handler_and_keeps_the_services(folder: Path, started: list[Dev]) -> None:
    dev = Dev(folder, folder / ".oprunner", "--reload")
    started.append(dev)
    dev.wait_for(lambda: "ready: the app 'notes' is served" in dev.stdout(), "the first generation")
    assert dev.add("hello")["output"]["shouted"] == "HELLO!"
    source = folder / "notes.py"
    source.write_text(source.read_text().replace('text.upper() + "!"', 'text.upper() + "?!"'))

    def edited() -> bool:
        try:
            return dev.add("again").get("output", {}).get("shouted") == "AGAIN?!"
        except httpx.HTTPError:  # between two generations
            return False

    dev.wait_for(edited, "the edited handler")
    assert "reloading: 1 file(s) changed" in dev.stdout()
    assert dev.add("third")["output"]["id"] >= 3  # the same database across the reload
    assert dev.stop() == 0
    assert not port_open(int(dev.env["OPRUNNER_HTTP_PORT"]))


def test_a_dev_killed_outright_leaves_nothing_running_once_started_again(
    folder: Path, started: list[Dev]
) -> None:
    state = folder / ".oprunner"
    killed = Dev(folder, state)
    started.append(killed)
    added = killed.add("before the kill")
    left = {name: pid for name, (pid, _) in json.loads((state / "state.json").read_text())["pids"].items()}
    postmaster = int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    killed.proc.kill()  # SIGKILL: no cleanup at all; its broker and Postgres run on
    killed.proc.wait(10)
    assert all(alive(pid) for pid in [*left.values(), postmaster])
    again = Dev(folder, state)
    started.append(again)
    assert not any(alive(pid) for pid in [*left.values(), postmaster])  # stopped by the new one
    run = httpx.get(
        f"{again.url}/ops/runs/{added['commandId']}",
        headers={"authorization": f"Bearer {again.env['OPRUNNER_TOKEN']}"},
        timeout=20,
    )
    assert run.status_code == 200  # its database, as it was
    # killed outright again, then --reset: what it left running is stopped before its data goes
    left = {name: pid for name, (pid, _) in json.loads((state / "state.json").read_text())["pids"].items()}
    postmaster = int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    again.proc.kill()
    again.proc.wait(10)
    fresh = Dev(folder, state, "--reset")
    started.append(fresh)
    assert not any(alive(pid) for pid in [*left.values(), postmaster])
    assert fresh.add("after reset")["output"]["id"] == 1
    assert fresh.stop() == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone too
