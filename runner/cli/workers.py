"""``oprunner serve --workers N``: N serving processes in one consumer group behind one HTTP port.

As uvicorn's and gunicorn's workers do, this process (the supervisor) binds the listening
socket once and hands it to each worker (``--http-fd``); the kernel gives each connection to
whichever worker accepts first. Each worker is a whole ``oprunner serve``: its own event
loop, database pool and consumer, a member of the group like any other, so Kafka spreads the
partitions over them and a worker's claims protect its commands as they protect a host's.

Supervision:

* the first worker starts alone (it applies migrations and creates topics), the others
  once it serves; a worker says it is serving by writing to a pipe (``--ready-fd``);
* if that first one exits before it serves (bad configuration, no database), the
  supervisor stops with its exit status instead of restarting it forever;
* any other worker that dies is started again, after a back-off of its own that grows
  while it keeps dying (1 s, doubling to 30 s; reset once it has served for a minute);
* a worker whose supervisor dies (even by SIGKILL) gets SIGTERM from the kernel (Linux);
  workers run in their own process group, so a terminal's Ctrl-C reaches the supervisor,
  which passes SIGTERM on;
* ``/metrics`` answers for all workers at once, whichever takes the scrape (Prometheus's
  multiprocess mode, in a temporary directory of the supervisor's);
* SIGTERM or SIGINT is passed to every worker, which drain as one ``serve`` does; those
  still running after ``OPRUNNER_SHUTDOWN_TIMEOUT`` plus the HTTP drain and a margin are
  killed.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ..settings import Settings

_log = logging.getLogger("oprunner.workers")

BACKOFF_START, BACKOFF_MAX, STEADY_AFTER = 1.0, 30.0, 60.0


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto``: the cores this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number or 'auto', got {value!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    return count


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket every worker accepts on (``pass_fds`` hands it to each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def die_with_supervisor() -> None:
    """In a worker, first thing: on Linux, have the kernel send it SIGTERM (a drain) when its
    supervisor dies, even by SIGKILL; and if the supervisor died already (before this ran),
    drain at once. Done here rather than between fork and exec, where only async-signal-safe
    work belongs."""
    supervisor = int(os.environ.get("OPRUNNER_SUPERVISOR_PID", "0"))
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if supervisor and os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def exit_status(code: int) -> int:
    """A child's return code as a shell would report it: ``128 + n`` for death by signal n."""
    return 128 - code if code < 0 else code


@dataclass
class Worker:
    number: int
    proc: subprocess.Popen[bytes]
    ready_fd: int | None  # the read end of its pipe, until it said it serves (or closed it)
    ready_at: float | None = None


class Supervisor:
    def __init__(self, target: str, count: int, settings: Settings, *, python: str = sys.executable) -> None:
        self.target = target
        self.count = count
        self.settings = settings
        self.python = python
        self.workers: dict[int, Worker] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.restarts = 0
        self._backoff: dict[int, float] = {}  # worker number -> its next back-off
        self._due: dict[int, float] = {}  # worker number -> when to start it again
        self.metrics_dir = ""  # the workers' shared Prometheus files, made by run
        self.sock: socket.socket | None = None

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _spawn(self, number: int) -> None:
        assert self.sock is not None
        read, write = os.pipe()
        cmd = [
            self.python,
            "-m",
            "runner",
            "serve",
            self.target,
            "--http-fd",
            str(self.sock.fileno()),
            "--ready-fd",
            str(write),
        ]
        env = {
            **os.environ,
            "OPRUNNER_WORKER": str(number),
            "OPRUNNER_SUPERVISOR_PID": str(os.getpid()),
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        try:
            # its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # passes SIGTERM on (a worker still starting would die of a raw SIGINT)
            proc = subprocess.Popen(cmd, pass_fds=(self.sock.fileno(), write), env=env, process_group=0)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.workers[number] = Worker(number, proc, read)
        self.selector.register(read, selectors.EVENT_READ, self.workers[number])
        _log.info("worker %d started (pid %d)", number, proc.pid)

    def _read_ready(self, timeout: float) -> None:
        """Note the workers that said they serve; stop watching a pipe once it is done with
        (written, or closed unwritten: its worker's exit is then what tells)."""
        for key, _ in self.selector.select(timeout=timeout):
            worker: Worker = key.data
            assert worker.ready_fd is not None
            if os.read(worker.ready_fd, 64) and worker.ready_at is None:
                worker.ready_at = time.monotonic()
            self._close_pipe(worker)

    def _close_pipe(self, worker: Worker) -> None:
        if worker.ready_fd is not None:
            self.selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _forget(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        # its "live" gauges end with it; its counters stay in the sums
        multiprocess.mark_process_dead(worker.proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self._close_pipe(worker)
        self.workers.pop(worker.number, None)

    def run(self) -> int:
        """Serve until a signal (0 when every worker drained cleanly), or until the first
        worker fails before it served (its exit status)."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.sock = listen(self.settings.http_host, self.settings.http_port)
        self.metrics_dir = tempfile.mkdtemp(prefix="oprunner-metrics-")
        try:
            self._spawn(0)  # the first alone: it applies migrations and makes the topics,
            failed = self._first_ready()  # and a bad configuration fails once, not N times
            if failed is not None:
                return failed
            for number in range(1, self.count):
                self._spawn(number)
            where = f"{self.settings.http_host}:{self.settings.http_port}"
            _log.info("supervising %d workers on %s", self.count, where)
            self._watch()
            return self._drain()
        finally:
            for worker in list(self.workers.values()):
                if worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
                self._forget(worker)
            if self.sock is not None:
                self.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _first_ready(self) -> int | None:
        """Wait for worker 0 to serve: None then, else its exit status (or the drain's, when
        told to stop first)."""
        first = self.workers[0]
        while first.ready_at is None:
            if self.stopping:
                return self._drain()
            self._read_ready(0.2)
            if first.ready_at is None and (code := first.proc.poll()) is not None:
                self._forget(first)
                _log.error("worker 0 exited (%s) before serving; stopping", code)
                return exit_status(code) or 1
        return None

    def _watch(self) -> None:
        """Until told to stop: note who serves, start again who died (after its back-off)."""
        while not self.stopping:
            self._read_ready(0.2)
            now = time.monotonic()
            for worker in list(self.workers.values()):
                code = worker.proc.poll()
                if code is None:
                    if worker.ready_at is not None and now - worker.ready_at > STEADY_AFTER:
                        self._backoff.pop(worker.number, None)  # it served steadily: start over
                    continue
                if self.stopping:
                    break
                self._forget(worker)
                backoff = self._backoff.get(worker.number, BACKOFF_START)
                how = "before serving" if worker.ready_at is None else "after serving"
                _log.error(
                    "worker %d (pid %d) died (%s) %s; starting it again in %.0fs",
                    worker.number,
                    worker.proc.pid,
                    code,
                    how,
                    backoff,
                )
                self._due[worker.number] = now + backoff
                self._backoff[worker.number] = min(BACKOFF_MAX, backoff * 2)
            for number, due in list(self._due.items()):
                if now >= due and not self.stopping:
                    del self._due[number]
                    self.restarts += 1
                    try:
                        self._spawn(number)
                    except OSError as exc:  # out of processes or descriptors: try again later
                        _log.error("worker %d could not be started (%s)", number, exc)
                        self._due[number] = now + self._backoff.get(number, BACKOFF_START)

    def _drain(self) -> int:
        """Stop taking connections, SIGTERM every worker, wait for them to drain, kill those
        that outlast the budget. 0 if all drained cleanly, else the first failure's status."""
        if self.sock is not None:  # the workers close theirs: no new connection waits in a backlog
            self.sock.close()
            self.sock = None
        alive = [w for w in self.workers.values() if w.proc.poll() is None]
        for worker in alive:
            worker.proc.send_signal(signal.SIGTERM)
        budget = self.settings.shutdown_timeout + self.settings.http_shutdown_timeout + 15
        deadline = time.monotonic() + budget
        code = 0
        for worker in alive:
            try:
                rc = worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker %d did not drain within %.0fs; killing it", worker.number, budget)
                worker.proc.kill()
                worker.proc.wait()
                rc = 1
            if rc != 0 and rc != -signal.SIGTERM:
                code = code or exit_status(rc)
        _log.info("stopped %d workers (%d restarts)", len(alive), self.restarts)
        return code
