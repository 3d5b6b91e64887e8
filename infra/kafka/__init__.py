"""Kafka, for the engine: the consumer that drives commands through the executor, the
publisher and outbox relay, and topic administration."""

from .admin import ensure_topics
from .consumer import CommandConsumer
from .publisher import KafkaPublisher, OutboxRelay

__all__ = ["CommandConsumer", "KafkaPublisher", "OutboxRelay", "ensure_topics"]
