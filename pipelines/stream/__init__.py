"""Kafka stream processors: a shared consumer loop with DLQ and exactly-once effect on Redis."""

from pipelines.stream.base import ProcessorConfig, SourcedEvent, StreamProcessor, RedisTransactionalHandler
from pipelines.stream.popularity import PopularityHandler

__all__ = ["ProcessorConfig", "SourcedEvent", "StreamProcessor", "RedisTransactionalHandler", "PopularityHandler"]
