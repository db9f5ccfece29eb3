"""In-memory stand-ins for a stream processor's Kafka consumer and producer and for its state, so
the shared consumer loop (pipelines/stream/base.py) runs in unit tests without servers."""

from __future__ import annotations

import json

from pipelines.stream.base import ProcessorConfig, SourcedEvent, StreamProcessor
from recstream.kafka_io import DLQ_MAX_BYTES
from recstream.settings import Settings


class FakeSource:
    """The pipelines.stream.source.Source interface over a list of polls ({partition: [Record]})."""

    def __init__(self, batches, partitions=(0, 1), allow_seek: bool = True):
        self.batches = list(batches)
        self.partitions = list(partitions)
        self.allow_seek = allow_seek
        self.commits, self.seeks = [], []

    def poll(self, max_records, timeout_s):
        return self.batches.pop(0) if self.batches else {}

    def commit(self, next_offsets):
        self.commits.append(dict(next_offsets))

    def assignment(self):
        return list(self.partitions)

    def seek(self, partition, offset):
        if not self.allow_seek:
            raise AssertionError(f"no rewind expected (seek to {partition}@{offset})")
        self.seeks.append((partition, offset))

    def lag(self):
        return {}

    def close(self):
        pass


class FakeFuture:
    def __init__(self, exc=None):
        self.exception = exc

    def failed(self):
        return self.exception is not None


class FakeProducer:
    """Acknowledges every send, except the first `fail_first`, which fail after the flush.
    `sent` holds (topic, key, decoded JSON value)."""

    def __init__(self, fail_first: int = 0):
        self.sent, self.attempts, self.fail_first = [], 0, fail_first

    def send(self, topic, key=None, value=None):
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return FakeFuture(RuntimeError("broker unavailable"))
        assert len(value) <= DLQ_MAX_BYTES
        self.sent.append((topic, key, json.loads(value)))
        return FakeFuture()

    def flush(self):
        pass

    def close(self):
        pass


class MemoryHandler:
    """Offsets stored with the state, like the Redis handlers: redelivered records are skipped."""

    name = "mem"

    def __init__(self):
        self.items: list[str] = []
        self.offsets: dict[int, int] = {}
        self.skipped = 0

    def stored_offsets(self, topic):
        return dict(self.offsets)

    def apply(self, topic, events: list[SourcedEvent], next_offsets):
        fresh = [e for e in events if e.offset >= self.offsets.get(e.partition, 0)]
        self.skipped += len(events) - len(fresh)
        self.items += [e.event.item_id for e in fresh]
        self.offsets.update({p: max(o, self.offsets.get(p, 0)) for p, o in next_offsets.items()})
        return len(fresh)


def fake_processor(batches, handler=None, producer=None, source=None, **config) -> StreamProcessor:
    """A StreamProcessor named "mem" on a MemoryHandler (or `handler`) and the fakes above."""
    p = StreamProcessor(handler or MemoryHandler(), ProcessorConfig(name="mem", **{"retry_backoff_ms": 1, **config}),
                        Settings())
    p.consumer, p.producer = source or FakeSource(batches), producer or FakeProducer()
    return p
