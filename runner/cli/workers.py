"""``oprunner serve --workers N``: N serving processes in one consumer group behind one HTTP port.

As uvicorn's and gunicorn's workers do, this process (the supervisor) binds the listening
socket once and hands it to each worker (``--http-fd``); the kernel gives each connection to
whichever worker accepts first. Each worker is a whole ``oprunner serve``: its own event
loop, database pool and consumer, a member of the group like any other, so Kafka spreads the
partitions over them and a worker's claims protect its commands as they protect a host's.

Supervision:

* the first worker starts alone (it applies migrations and creates topics), the others
  once it serves; a worker says it is serving by writing to a pipe (``--ready-fd``);
* one that exits before that (bad configuration, no database) stops the supervisor with
  its exit code, instead of being restarted forever;
* a worker that dies after it served is started again, after a back-off that grows while
  workers keep dying (1 s, doubling to 30 s; reset once one has served for a minute);
* a worker whose supervisor dies (even by SIGKILL) gets SIGTERM from the kernel (Linux);
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
from dataclasses import dataclass, field
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
    """The one listening socket every worker accepts on (inheritable, so children get it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """In the child before it runs: on Linux, have the kernel send it SIGTERM (a drain) if the
    supervisor dies, even by SIGKILL, so no worker outlives it unsupervised."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Worker:
    number: int
    proc: subprocess.Popen[bytes]
    ready_fd: int  # the read end of its pipe
    started: float = field(default_factory=time.monotonic)
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
        self._backoff = BACKOFF_START
        self._due: dict[int, float] = {}  # worker number -> when to start it again
        self.metrics_dir = ""  # the workers' shared Prometheus files, made by run

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _spawn(self, number: int, sock: socket.socket) -> None:
        read, write = os.pipe()
        cmd = [
            self.python,
            "-m",
            "runner",
            "serve",
            self.target,
            "--http-fd",
            str(sock.fileno()),
            "--ready-fd",
            str(write),
        ]
        env = {**os.environ, "OPRUNNER_WORKER": str(number), "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(), write), env=env, preexec_fn=_die_with_parent)
        os.close(write)
        worker = Worker(number, proc, read)
        self.workers[number] = worker
        self.selector.register(read, selectors.EVENT_READ, worker)
        _log.info("worker %d started (pid %d)", number, proc.pid)

    def _forget(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        # its "live" gauges end with it; its counters stay in the sums
        multiprocess.mark_process_dead(worker.proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self.selector.unregister(worker.ready_fd)
        os.close(worker.ready_fd)
        self.workers.pop(worker.number, None)

    def run(self) -> int:
        """Serve until a signal (0 when every worker drained cleanly), or until a worker fails
        before it served (its exit code)."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        sock = listen(self.settings.http_host, self.settings.http_port)
        self.metrics_dir = tempfile.mkdtemp(prefix="oprunner-metrics-")
        try:
            self._spawn(0, sock)  # the first alone: it applies migrations and makes the topics,
            failed = self._first_ready()  # and a bad configuration fails once, not N times
            if failed is not None:
                return failed
            for number in range(1, self.count):
                self._spawn(number, sock)
            where = f"{self.settings.http_host}:{self.settings.http_port}"
            _log.info("supervising %d workers on %s", self.count, where)
            failed = self._watch(sock)
            return failed if failed is not None else self._drain()
        finally:
            for worker in list(self.workers.values()):
                if worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
                self._forget(worker)
            sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _first_ready(self) -> int | None:
        """Wait for worker 0 to serve: None then, else its exit code (or 0 when told to stop)."""
        first = self.workers[0]
        while first.ready_at is None:
            if self.stopping:
                return self._drain()
            for key, _ in self.selector.select(timeout=0.2):
                if os.read(key.data.ready_fd, 64):
                    key.data.ready_at = time.monotonic()
            if first.ready_at is None and (code := first.proc.poll()) is not None:
                self._forget(first)
                _log.error("worker 0 exited (%s) before serving; stopping", code)
                return code if code else 1
        return None

    def _watch(self, sock: socket.socket) -> int | None:
        """Until told to stop: note who is serving, restart who died. The exit code of a worker
        that died before it ever served, or None once stopping."""
        while not self.stopping:
            for key, _ in self.selector.select(timeout=0.2):
                worker = key.data
                if os.read(worker.ready_fd, 64) and worker.ready_at is None:
                    worker.ready_at = time.monotonic()
            now = time.monotonic()
            for worker in list(self.workers.values()):
                code = worker.proc.poll()
                if code is None:
                    if worker.ready_at is not None and now - worker.ready_at > STEADY_AFTER:
                        self._backoff = BACKOFF_START  # serving steadily: the next death is news
                    continue
                if self.stopping:
                    break
                self._forget(worker)
                if worker.ready_at is None:
                    _log.error("worker %d exited (%s) before serving; stopping", worker.number, code)
                    self.stopping = True
                    self._drain()
                    return code if code else 1
                _log.error(
                    "worker %d (pid %d) died (%s); starting it again in %.0fs",
                    worker.number,
                    worker.proc.pid,
                    code,
                    self._backoff,
                )
                self._due[worker.number] = now + self._backoff
                self._backoff = min(BACKOFF_MAX, self._backoff * 2)
            for number, due in list(self._due.items()):
                if now >= due and not self.stopping:
                    del self._due[number]
                    self.restarts += 1
                    self._spawn(number, sock)
        return None

    def _drain(self) -> int:
        """SIGTERM to every worker; wait for them to drain; kill those that outlast the budget."""
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
            code = code or (rc if rc > 0 else 0)
        _log.info("stopped %d workers (%d restarts)", len(alive), self.restarts)
        return code
