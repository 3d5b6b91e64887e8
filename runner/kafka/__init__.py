"""The Kafka transport: the command consumer and the outbox publisher/relay, on FastStream."""

from .consumer import CommandConsumer
from .publisher import KafkaPublisher, OutboxRelay

__all__ = ["CommandConsumer", "KafkaPublisher", "OutboxRelay"]
