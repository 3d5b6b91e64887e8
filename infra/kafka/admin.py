"""Kafka topic admin: create the runner's topics when they are missing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

_log = logging.getLogger("oprunner.kafka")


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication: int = 1,
    config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create each missing topic with the given partition count, replication factor and topic
    config (``min.insync.replicas``, say); return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, parts, replication, topic_configs=dict(config or {}))
            for name, parts in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process got there first
                await admin.create_topics(missing)
            _log.info("created topics %s", [t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()
