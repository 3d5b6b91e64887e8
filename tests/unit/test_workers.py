"""``--workers``: how many, read the way uvicorn and gunicorn users expect; and the
supervisor's bookkeeping, on fake workers with real ready pipes."""

from __future__ import annotations

import os
import signal

import prometheus_client.multiprocess
import pytest

from runner.cli import workers as workers_module
from runner.cli.workers import Supervisor, Worker, exit_status, worker_count
from runner.settings import Settings


def test_a_number_is_that_many() -> None:
    assert worker_count("1") == 1 and worker_count("4") == 4


def test_auto_is_the_cores_this_process_may_use() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("-2", "at least 1"), ("two", "'auto'")])
def test_anything_else_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        worker_count(value)


def test_exit_status_is_what_a_shell_reports() -> None:
    assert exit_status(0) == 0 and exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 137 and exit_status(-signal.SIGTERM) == 143


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class FakeSupervisor(Supervisor):
    """Spawns fake workers, each with a real ready pipe (``writers``); records every start."""

    def __init__(self) -> None:
        super().__init__("app:app", 2, Settings())
        self.started: list[int] = []
        self.writers: dict[int, int] = {}

    def _spawn(self, number: int) -> None:
        read, self.writers[number] = os.pipe()
        self.started.append(number)
        self.workers[number] = Worker(number, FakeProc(1000 + len(self.started)), read)  # type: ignore[arg-type]
        self.selector.register(read, workers_module.selectors.EVENT_READ, self.workers[number])

    def say_ready(self, number: int) -> None:
        os.write(self.writers[number], b"1")
        os.close(self.writers[number])

    def step(self) -> None:
        """One pass of ``_watch``'s loop."""
        real, calls = self._read_ready, [0]

        def once(timeout: float) -> None:
            calls[0] += 1
            if calls[0] > 1:
                self.stopping = True
            else:
                real(0)

        self._read_ready = once  # type: ignore[method-assign]
        try:
            self._watch()
        finally:
            self._read_ready = real  # type: ignore[method-assign]
            self.stopping = False


@pytest.fixture(autouse=True)
def no_metrics_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_client.multiprocess, "mark_process_dead", lambda pid, path=None: None)


def test_a_ready_pipe_is_read_once_then_dropped() -> None:
    """A pipe at end-of-file stays readable: watched after it spoke, it would spin the loop."""
    sup = FakeSupervisor()
    sup._spawn(0)
    sup._spawn(1)
    sup.say_ready(0)
    os.close(sup.writers[1])  # closed unwritten: its exit, not its pipe, will tell
    sup._read_ready(0.5)
    assert sup.workers[0].ready_at is not None and sup.workers[0].ready_fd is None
    assert sup.workers[1].ready_at is None and sup.workers[1].ready_fd is None
    assert sup.selector.get_map() == {}


def test_a_worker_that_keeps_dying_backs_off_alone_and_never_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "STEADY_AFTER", 0.0)  # worker 0 is steady at once
    clock = [1000.0]
    monkeypatch.setattr(workers_module.time, "monotonic", lambda: clock[0])
    sup = FakeSupervisor()
    sup._spawn(0)
    sup.say_ready(0)
    sup._spawn(1)
    delays = []
    for _ in range(4):  # worker 1 dies before serving, four times in a row
        sup.workers[1].proc.code = 1  # type: ignore[attr-defined]
        sup.step()
        delays.append(sup._due[1] - clock[0])
        clock[0] = sup._due[1]
        sup.step()  # due: started again
        assert 1 in sup.workers
    assert delays == [1.0, 2.0, 4.0, 8.0]  # its own back-off, not reset by worker 0's health
    assert sup.started == [0, 1, 1, 1, 1, 1] and sup.restarts == 4
    assert sup.workers[0].proc.poll() is None  # the healthy one was never touched
