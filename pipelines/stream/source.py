"""Where a stream processor's records come from: a small interface and its Kafka implementation.

The Kafka source is librdkafka (confluent-kafka): fetching and decoding happen in its own threads,
outside the GIL, so a Python processor spends its time on its own work. (kafka-python decoded
about 32k records/s on one core here, librdkafka about 150k with parsing.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from recstream.errors import StackError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes | None
    offset: int
    timestamp_ms: int


class Source(Protocol):
    """A partitioned log read by one member of a consumer group."""

    def poll(self, max_records: int, timeout_s: float) -> dict[int, list[Record]]:
        """Up to max_records records, grouped by partition in log order; {} when idle."""

    def commit(self, next_offsets: dict[int, int]) -> None:
        """Record partition -> next offset to read for the group (may complete later)."""

    def assignment(self) -> list[int]:
        """Partitions this member owns now."""

    def seek(self, partition: int, offset: int) -> None:
        """Read `partition` again from `offset`; records already fetched past it are dropped."""

    def lag(self) -> dict[int, int]:
        """partition -> records between the read position and the log end."""

    def close(self) -> None: ...


class KafkaSource:
    """One consumer-group member on `topic`.

    Args:
        start_offsets: called on every (re)assignment; partitions it names start there instead
            of at the group's committed offset (processors store offsets with their state).
        resumed: called on (re)assignment with partition -> records between where the group
            would have resumed (its committed offset, else the log start) and where this member
            starts (the offset `start_offsets` gave): records applied before a stop that did not
            commit them, which Kafka would redeliver and the seek skips. Observability only (one committed-
            offset request per assignment); a failure to measure is logged, never raised.
        fetch_wait_max_ms: how long the broker may hold a fetch waiting for more data. librdkafka's
            default (500 ms) would add up to half a second of latency at low rates.
    """

    def __init__(self, bootstrap: str, topic: str, group_id: str, client_id: str,
                 start_offsets: Callable[[], dict[int, int]] | None = None, fetch_wait_max_ms: int = 20,
                 session_timeout_ms: int = 10_000, resumed: Callable[[dict[int, int]], None] | None = None):
        self.topic = topic
        self._start_offsets = start_offsets
        self._resumed = resumed
        self._assigned: list[int] = []
        try:
            self._c = Consumer({
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "client.id": client_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # A killed processor's partitions move to a live one after this long.
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(1000, session_timeout_ms // 3),
                "fetch.wait.max.ms": fetch_wait_max_ms,
                "fetch.max.bytes": 32 * 1024 * 1024,
                "log_level": 3,
            })
        except KafkaException as e:
            raise StackError(f"cannot create a Kafka consumer for {bootstrap}: {e}") from e
        self._c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._start_offsets() if self._start_offsets else {}
        for tp in partitions:
            if tp.partition in stored:
                tp.offset = stored[tp.partition]
        starts = {tp.partition: tp.offset for tp in partitions if tp.offset >= 0}  # where this member starts
        if self._resumed is not None and starts:
            skipped = self._past_committed(consumer, starts)
            if skipped:
                self._resumed(skipped)
        consumer.assign(partitions)
        self._assigned = sorted(tp.partition for tp in partitions)
        log.info("assigned %s partitions %s (stored offsets %s)", self.topic, self._assigned,
                 {p: stored[p] for p in self._assigned if p in stored})

    def _past_committed(self, consumer: Consumer, starts: dict[int, int]) -> dict[int, int]:
        """partition -> where this member starts minus where the group would resume (see `resumed`)."""
        try:
            out = {}
            for tp in consumer.committed([TopicPartition(self.topic, p) for p in starts], timeout=5.0):
                resume = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)[0]
                out[tp.partition] = max(0, starts[tp.partition] - resume)
            return out
        except KafkaException as e:
            log.debug("committed offsets of %s unavailable: %s", self.topic, e)
            return {}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.unassign()
        self._assigned = []

    def poll(self, max_records: int, timeout_s: float) -> dict[int, list[Record]]:
        out: dict[int, list[Record]] = {}
        # consume(n, timeout) waits until n records or the timeout, which at a moderate rate adds
        # the whole timeout to every record's latency. Take what is already fetched; only when
        # nothing is, wait for the first record and then take what came with it.
        msgs = self._c.consume(max_records, 0)
        if not msgs:
            first = self._c.poll(timeout_s)
            msgs = [] if first is None else [first, *(self._c.consume(max_records - 1, 0) if max_records > 1 else ())]
        for msg in msgs:
            err = msg.error()
            if err is not None:
                # Broker/transport errors are retried inside librdkafka; surface only fatal ones.
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consumer: %s", err)
                continue
            out.setdefault(msg.partition(), []).append(Record(msg.key(), msg.value(), msg.offset(), msg.timestamp()[1]))
        return out

    def commit(self, next_offsets: dict[int, int]) -> None:
        # Asynchronous: processors keep their true position with their state, so the group's
        # committed offset is a hint (lag tools, a processor with no stored offset yet) that
        # should not cost a broker round trip per batch.
        if next_offsets:
            self._c.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in next_offsets.items()],
                           asynchronous=True)

    def assignment(self) -> list[int]:
        return list(self._assigned)

    def partition_count(self, timeout_s: float = 10.0) -> int:
        """The topic's partition count, from the brokers' metadata."""
        meta = self._c.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise StackError(f"topic {self.topic}: no metadata ({None if meta is None else meta.error})")
        return len(meta.partitions)

    def seek(self, partition: int, offset: int) -> None:
        self._c.seek(TopicPartition(self.topic, partition, offset))

    def lag(self) -> dict[int, int]:
        out = {}
        tps = [TopicPartition(self.topic, p) for p in self._assigned]
        for tp in self._c.position(tps) if tps else []:
            _, high = self._c.get_watermark_offsets(tp, timeout=2.0, cached=False)
            if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                out[tp.partition] = max(0, high - tp.offset)
        return out

    def close(self) -> None:
        self._c.close()
