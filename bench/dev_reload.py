"""How long the edit loop of ``oprunner dev`` takes, on a one-file app in a temp folder.

Measured in one run, each from the moment before the change to the first answer of the
changed code (polled every 50 ms):

* ``--reload``: the handler's file is saved; the services stay up.
* restart: ``dev`` is stopped (Ctrl-C) and started again on its kept state.
* fresh: ``dev --reset``: new database and broker, the baseline a developer had before.

    python -m bench.dev_reload [--edits 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
THINK = 5.0
"""Seconds between an answer and the next edit, as a developer reads it: a ``dev`` stopped
the moment it first answers would still be joining its consumer group (a rebalance), which
no one waits for in real use."""
APP = """
from runner import App, IO, Meta, Model, OperationRegistry, Policy, define_command, install_op


class EchoInput(Model):
    text: str


class EchoOutput(Model):
    said: str


Echo = define_command(
    meta=Meta(key="echo.say", version="1.0.0", description="Say it back"),
    io=IO(input=EchoInput, output=EchoOutput),
    policy=Policy(auth="user"),
)


async def say(value: EchoInput, ctx) -> EchoOutput:
    return EchoOutput(said=value.text + MARK)


MARK = "#0"
registry = OperationRegistry()
install_op(registry, Echo, say)
app = App(registry=registry, name="echo")
"""


class Dev:
    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.out = folder / "dev.out"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPRUNNER_")}
        with self.out.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "dev", "echo:app", *args],
                cwd=folder,
                env={**clean, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def env(self) -> dict[str, str]:
        lines = (self.folder / ".oprunner" / "env").read_text().splitlines()
        pairs = (line.removeprefix("export ").split("=", 1) for line in lines)
        return {k: shlex.split(v)[0] for k, v in pairs}

    def says(self, mark: str, timeout: float = 120.0) -> float:
        """Seconds until ``echo.say`` answers with ``mark``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc.poll() is None, self.out.read_text()
            try:
                env = self.env()
                r = httpx.post(
                    f"http://127.0.0.1:{env['OPRUNNER_HTTP_PORT']}/ops/echo.say",
                    json={"text": "x"},
                    headers={"authorization": f"Bearer {env['OPRUNNER_TOKEN']}"},
                    timeout=1,  # a request the stopping generation took is not waited out
                )
                if r.status_code == 200 and r.json().get("output", {}).get("said") == "x" + mark:
                    return time.monotonic() - started
            except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no {mark!r} within {timeout}s")

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        return time.monotonic() - started


def edit(folder: Path, mark: str) -> None:
    source = folder / "echo.py"
    source.write_text(re.sub(r'MARK = "[^"]*"', f'MARK = "{mark}"', source.read_text()))


def main(edits: int) -> int:
    with tempfile.TemporaryDirectory(prefix="oprunner-devbench-", dir="/tmp") as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)
        (folder / "echo.py").write_text(APP)
        began = time.monotonic()
        dev = Dev(folder, "--reset")
        dev.says("#0")
        fresh = time.monotonic() - began
        time.sleep(THINK)
        restarts = []
        for n in range(1, edits + 1):  # the loop without --reload: stop, edit, start, ask
            began = time.monotonic()
            dev.stop()
            edit(folder, f"#r{n}")
            dev = Dev(folder)
            dev.says(f"#r{n}")
            restarts.append(time.monotonic() - began)
            time.sleep(THINK)
        dev.stop()
        dev = Dev(folder, "--reload")
        dev.says(f"#r{edits}")
        reloads = []
        for n in range(1, edits + 1):  # with it: edit, ask
            time.sleep(THINK)
            began = time.monotonic()
            edit(folder, f"#e{n}")
            dev.says(f"#e{n}")
            reloads.append(time.monotonic() - began)
        dev.stop()
    print(f"{'edit loop':40} {'median s':>9} {'min s':>7} {'max s':>7}  runs")
    for name, values in [
        ("fresh: dev --reset, first answer", [fresh]),
        ("restart: Ctrl-C, edit, dev, first answer", restarts),
        ("--reload: edit, first answer", reloads),
    ]:
        print(
            f"{name:40} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}  {len(values)}"
        )
    print(f"--reload / restart (medians): {statistics.median(reloads) / statistics.median(restarts):.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=5)
    sys.exit(main(parser.parse_args().edits))
