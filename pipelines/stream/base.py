"""The consumer loop every stream processor shares.

Exactly-once effect: a handler stores, in the same Redis transaction as its state change, the
next offset of every partition it applied (`<prefix>:offsets:<processor>`). A redelivered record
at or below that offset is skipped, and on (re)assignment the consumer seeks to the stored offset,
so a process killed between the write and the Kafka commit neither loses nor double-applies an
event. The Kafka commit after the write is only a hint for tools that read group lag.

Bad records go to the DLQ (original bytes, reason, source topic/partition/offset) before the batch
is applied; a crash in between may write a DLQ record twice (at-least-once on the DLQ, which
carries its source offset for de-duplication) but never loses one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field

from pipelines.stream import metrics as m
from pipelines.stream.source import KafkaSource, Record, Source
from recstream.errors import InvalidEvent
from recstream.events import Event, parse_event
from recstream.kafka_io import dlq_record, make_producer
from recstream.settings import Settings, get_settings

log = logging.getLogger(__name__)


# Dependency errors worth waiting out (Redis restarting, loading its append-only file).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


class ProcessorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="processor name; also the consumer group suffix and offsets key")
    batch_max_records: int = Field(2000, ge=1, le=100_000, description="records per poll/apply batch")
    poll_timeout_ms: int = Field(200, ge=1, le=60_000, description="poll wait when the topic is idle")
    retry_backoff_ms: int = Field(500, ge=1, le=60_000, description="pause before retrying a failed state write")
    lag_every_s: float = Field(5.0, gt=0, description="how often consumer lag is measured")
    fetch_wait_max_ms: int = Field(20, ge=1, le=10_000,
                                   description="longest the broker holds a fetch for more data (bounds freshness at low rates)")

    @property
    def group_id(self) -> str:
        return f"recstream.{self.name}"


@dataclass(frozen=True)
class SourcedEvent:
    event: Event
    partition: int
    offset: int
    kafka_ts_ms: int


class Handler(Protocol):
    """State a processor maintains. `apply` must be atomic with the offsets it is given."""

    name: str

    def stored_offsets(self, topic: str) -> dict[int, int]:
        """partition -> next offset to read, as stored with the state."""

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        """Apply events not yet applied and store next_offsets in the same transaction.

        Returns:
            how many events were applied (redelivered ones are skipped).
        """


class RedisTransactionalHandler:
    """Base for handlers whose state lives in Redis: offsets stored in the same MULTI/EXEC.

    Subclasses implement `write(pipe, events)`, queueing commands on a transactional pipeline.
    WATCH on the offsets key fences a zombie consumer that lost its partitions mid-batch.
    """

    name = "base"

    def __init__(self, client: redis.Redis, prefix: str = "rs"):
        self.r = client
        self.prefix = prefix

    def offsets_key(self, topic: str) -> str:
        return f"{self.prefix}:offsets:{self.name}:{topic}"

    def stored_offsets(self, topic: str) -> dict[int, int]:
        raw = self.r.hgetall(self.offsets_key(topic))
        return {int(k): int(v) for k, v in raw.items()}

    def write(self, pipe: redis.client.Pipeline, events: list[SourcedEvent]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.write")

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        key = self.offsets_key(topic)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    stored = {int(k): int(v) for k, v in pipe.hgetall(key).items()}
                    fresh = [e for e in events if e.offset >= stored.get(e.partition, 0)]
                    advance = {p: o for p, o in next_offsets.items() if o > stored.get(p, 0)}
                    pipe.multi()
                    if fresh:
                        self.write(pipe, fresh)
                    if advance:
                        pipe.hset(key, mapping={str(p): o for p, o in advance.items()})
                    pipe.execute()
                    m.DUPLICATES.labels(self.name).inc(len(events) - len(fresh))
                    return len(fresh)
                except redis.WatchError:
                    continue  # another writer moved the offsets; re-read and re-filter


class StreamProcessor:
    """Consume `events_topic` in a consumer group and feed a handler, with DLQ and metrics."""

    def __init__(self, handler: Handler, config: ProcessorConfig, settings: Settings | None = None):
        self.handler = handler
        self.config = config
        self.settings = settings or get_settings()
        self.topic = self.settings.events_topic
        self._stop = threading.Event()
        self.consumer: Source | None = None
        self.producer = None
        self.applied_total = 0
        self.dlq_total = 0
        self._last_lag = 0.0

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def _connect(self) -> None:
        # On (re)assignment, start each partition at the offset stored with the state.
        self.consumer = KafkaSource(self.settings.kafka_bootstrap, self.topic, self.config.group_id,
                                    client_id=f"recstream-{self.config.name}",
                                    start_offsets=lambda: self.handler.stored_offsets(self.topic),
                                    fetch_wait_max_ms=self.config.fetch_wait_max_ms)
        self.producer = make_producer(self.settings, client_id=f"recstream-{self.config.name}-dlq")

    def run(self, max_idle_s: float | None = None, max_events: int | None = None) -> None:
        """Process until stopped; optionally until idle for max_idle_s or after max_events applied."""
        self._connect()
        recover = getattr(self.handler, "recover", None)
        if recover is not None:
            recover()  # e.g. publish an outbox a crashed run left behind
        tick = getattr(self.handler, "tick", None)
        idle_since = time.monotonic()
        log.info("processor %s consuming %s as group %s", self.config.name, self.topic, self.config.group_id)
        try:
            while not self._stop.is_set():
                n = self.step()
                if tick is not None:
                    try:
                        tick()
                    except _TRANSIENT as e:  # publication retries on the next tick; the outbox keeps the work
                        m.RETRIES.labels(self.config.name).inc()
                        log.warning("processor %s: tick failed (%s); retrying", self.config.name, e)
                        self._stop.wait(self.config.retry_backoff_ms / 1000)
                now = time.monotonic()
                # Idle counts only while we own partitions: right after a crash the group waits
                # for the dead member's session to expire before it assigns us anything.
                if n or not self.consumer.assignment():
                    idle_since = now
                elif max_idle_s is not None and now - idle_since > max_idle_s:
                    break
                if max_events is not None and self.applied_total >= max_events:
                    break
                if now - self._last_lag > self.config.lag_every_s:
                    self._record_lag()
                    self._last_lag = now
        finally:
            drain = getattr(self.handler, "drain", None)
            if drain is not None:
                try:
                    drain()
                except Exception as e:  # whatever is left stays in the outbox for the next run
                    log.warning("processor %s: drain on stop failed: %s", self.config.name, e)
            self.close()

    def step(self) -> int:
        """One poll -> DLQ -> apply -> commit cycle. Returns records consumed."""
        polled: dict[int, list[Record]] = self.consumer.poll(self.config.batch_max_records,
                                                             self.config.poll_timeout_ms / 1000)
        if not polled:
            return 0
        good: list[SourcedEvent] = []
        next_offsets: dict[int, int] = {}
        first_offsets: dict[int, int] = {}
        bad = 0
        for partition, records in polled.items():
            for rec in records:
                try:
                    ev = parse_event(rec.value)
                    good.append(SourcedEvent(ev, partition, rec.offset, rec.timestamp_ms))
                except InvalidEvent as e:
                    self.producer.send(self.settings.dlq_topic, key=rec.key,
                                       value=dlq_record(rec.value, e.reason, self.topic, partition, rec.offset, self.config.name))
                    bad += 1
            next_offsets[partition] = records[-1].offset + 1
            first_offsets[partition] = records[0].offset
        if bad:
            self.producer.flush()  # durable in the DLQ before the offsets move past them
            m.DLQ.labels(self.config.name).inc(bad)
            self.dlq_total += bad
        if not self._apply_with_retry(good, next_offsets, first_offsets):
            return 0  # rewound: the records come again from the stored offsets
        if good and not getattr(self.handler, "measures_own_freshness", False):  # e.g. visible only once published
            m.observe_freshness(self.config.name, time.time() * 1000 - np.fromiter((se.kafka_ts_ms for se in good),
                                                                                    np.float64, len(good)))
        self.consumer.commit(next_offsets)
        return sum(len(r) for r in polled.values())

    def _apply_with_retry(self, good: list[SourcedEvent], next_offsets: dict[int, int], first_offsets: dict[int, int]) -> bool:
        """Apply a batch, waiting out a Redis outage. Returns False when the batch was dropped
        because the state came back older than the batch (see below)."""
        while True:
            t0 = time.perf_counter()
            try:
                if self._rewind_if_state_lost(first_offsets):
                    return False
                applied = self.handler.apply(self.topic, good, next_offsets)
                break
            except _TRANSIENT as e:
                # A Redis outage stalls the processor instead of dropping the batch; offsets stay
                # uncommitted until the state write succeeds.
                m.RETRIES.labels(self.config.name).inc()
                log.warning("processor %s: state write failed (%s); retrying in %d ms", self.config.name, e,
                            self.config.retry_backoff_ms)
                if self._stop.wait(self.config.retry_backoff_ms / 1000):
                    raise
        m.BATCH_LATENCY.labels(self.config.name).observe(time.perf_counter() - t0)
        m.EVENTS.labels(self.config.name).inc(applied)
        self.applied_total += applied
        return True

    def _rewind_if_state_lost(self, first_offsets: dict[int, int]) -> bool:
        """After a restart Redis may come back from its append-only file a little older than it
        was (fsync every second), with or without this process noticing an error. Offsets and
        state roll back together, so if the stored offsets now sit before this batch, the records
        in between must be read again: seek back to the stored offsets and drop the batch. (One
        small read per batch; a partition with no stored offset starts where the consumer is.)"""
        stored = self.handler.stored_offsets(self.topic)
        behind = {p: stored[p] for p, o in first_offsets.items() if p in stored and stored[p] < o}
        if not behind:
            return False
        for partition in self.consumer.assignment():
            if partition in stored:
                self.consumer.seek(partition, stored[partition])
        log.warning("processor %s: state restored older than the consumer position; rewound to %s",
                    self.config.name, stored)
        return True

    def _record_lag(self) -> None:
        try:
            for partition, lag in self.consumer.lag().items():
                m.LAG.labels(self.config.name, str(partition)).set(lag)
        except Exception as e:  # lag is observability only; never stop processing for it
            log.debug("lag measurement failed: %s", e)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
            self.producer = None
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
