"""The consumer loop every stream processor shares.

Exactly-once effect: a handler stores, in the same Redis transaction as its state change, the
next offset of every partition it applied (`<prefix>:offsets:<processor>`). A redelivered record
at or below that offset is skipped, and on (re)assignment the consumer seeks to the stored offset,
so a process killed between the write and the Kafka commit neither loses nor double-applies an
event. The Kafka commit after the write is only a hint for tools that read group lag. Both places
are counted: records the seek skipped past the group's committed offset on assignment
(`recstream_processor_resume_skipped_total`) and redelivered records the handler skipped
(`recstream_processor_duplicates_total`).

State restored older (Redis back from an older snapshot or a little behind in its append-only
file): offsets roll back with the state, so the consumer seeks back to them and reads the records
again (`recstream_processor_rewinds_total`). It is noticed before each batch is applied and, while
no records arrive, every `idle_state_check_s` by comparing the stored offsets with what this
process applied, so a quiet partition is repaired too.

Bad records go to the DLQ (original bytes, reason, source topic/partition/offset) before the batch
is applied; a crash in between may write a DLQ record twice (at-least-once on the DLQ, which
carries its source offset for de-duplication) but never loses one. "Bad" is anything the decoder
raises, not only InvalidEvent: no record can stop a processor (a RecursionError from b"[" * 100000
once stopped every one of them, at the same offset after each restart). A DLQ write that fails is
retried until it is acknowledged; only then do the offsets move past it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field

from features.keys import KeyLayout, offsets_key
from pipelines.stream import metrics as m
from pipelines.stream.source import KafkaSource, Record, Source
from recstream.errors import InvalidEvent, StackError
from recstream.events import Event, parse_event
from recstream.kafka_io import dlq_record, make_producer
from recstream.partitioning import partition_for
from recstream.settings import Settings, get_settings
from recstream.strict_json import safe_text

log = logging.getLogger(__name__)


# Longest record key copied to a DLQ record (keys are user ids; a hostile one may be huge).
_DLQ_MAX_KEY_BYTES = 1024

# Exit status of a processor stopped by the `exit_after_writes` test hook.
EXIT_AFTER_WRITES_RC = 70

# Dependency errors worth waiting out (Redis restarting, loading its append-only file).
# On Redis Cluster also a slot whose master just failed: its replica takes over after
# cluster-node-timeout, and until then the cluster answers CLUSTERDOWN / TRYAGAIN or has no node.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
              redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, redis.exceptions.MasterDownError,
              redis.exceptions.SlotNotCoveredError, redis.exceptions.ClusterError)


def freeze_heap_for_streaming() -> None:
    """Take the objects alive now (modules, models, clients) out of the garbage collector's view
    and run young collections less often. A batch allocates tens of thousands of short-lived
    objects, and each older-generation collection walked the whole heap (pandas, Feast, torch:
    millions of objects) to find none of them: measured here, collection took half of a batch's
    write time and most of a Feast push. Process-wide; call it once set-up is done."""
    gc.freeze()
    gen0, *older = gc.get_threshold()
    gc.set_threshold(max(gen0, 20_000), *older)


class ProcessorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="processor name; also the consumer group suffix and offsets key")
    batch_max_records: int = Field(2000, ge=1, le=100_000, description="records per poll/apply batch")
    poll_timeout_ms: int = Field(200, ge=1, le=60_000, description="poll wait when the topic is idle")
    retry_backoff_ms: int = Field(500, ge=1, le=60_000, description="pause before retrying a failed state write")
    lag_every_s: float = Field(5.0, gt=0, description="how often consumer lag is measured")
    fetch_wait_max_ms: int = Field(20, ge=1, le=10_000,
                                   description="longest the broker holds a fetch for more data (bounds freshness at low rates)")
    idle_state_check_s: float = Field(1.0, gt=0, le=3600,
                                      description="while no records arrive, how often the stored offsets are compared "
                                                  "with what this process applied (finds a Redis restored older)")
    exit_after_writes: int | None = Field(None, ge=1,
                                          description="test hook for crash-window tests: after this many batches are "
                                                      "written to the state, and before that batch's Kafka commit, the "
                                                      f"process exits at once (os._exit({EXIT_AFTER_WRITES_RC})), as a "
                                                      "crash in that window would; None in production")

    @property
    def group_id(self) -> str:
        return f"recstream.{self.name}"


@dataclass
class _Batch:
    good: list["SourcedEvent"] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    first_offsets: dict[int, int] = field(default_factory=dict)
    n_records: int = 0


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

    Subclasses implement `write(pipe, events)`, queueing commands on a transactional pipeline;
    every event of one call shares one KeyLayout tag (`self.layout.tag(events[0].partition)`),
    under which the subclass writes. With the partitioned layout a batch spanning several
    partitions becomes one transaction per partition (state and that partition's offsets in one
    slot); with the single layout it stays one transaction.
    WATCH on the offsets key fences a zombie consumer that lost its partitions mid-batch.
    """

    name = "base"

    def __init__(self, client: redis.Redis, prefix: "str | KeyLayout" = "rs"):
        self.r = client
        self.layout = prefix if isinstance(prefix, KeyLayout) else KeyLayout(prefix)
        self.prefix = self.layout.prefix

    def offsets_key(self, topic: str, partition: int | None = None) -> str:
        """The offsets hash holding `partition` (any partition with the single layout)."""
        return offsets_key(self.layout.tag(partition), self.name, topic)

    def stored_offsets(self, topic: str) -> dict[int, int]:
        keys = [offsets_key(t, self.name, topic) for t in self.layout.tags()]
        if len(keys) == 1:
            raws = [self.r.hgetall(keys[0])]
        else:  # one hash per slot: a non-transactional pipeline reads them in one trip per node
            with self.r.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hgetall(k)
                raws = pipe.execute()
        return {int(k): int(v) for raw in raws for k, v in raw.items()}

    def write(self, pipe: redis.client.Pipeline, events: list[SourcedEvent]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.write")

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        groups: dict[str, tuple[list[SourcedEvent], dict[int, int], int]] = {}
        for p, o in next_offsets.items():
            groups.setdefault(self.layout.tag(p), ([], {}, p))[1][p] = o
        for se in events:
            groups.setdefault(self.layout.tag(se.partition), ([], {}, se.partition))[0].append(se)
        return sum(self._apply_slot(topic, evs, offs, p) for evs, offs, p in groups.values())

    def _apply_slot(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int], partition: int) -> int:
        """One transaction: the events and offsets of one tag (one partition, or all when single)."""
        key = self.offsets_key(topic, partition)
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
        # Partitioned layout: the state of partition p lives under p's hash tag, and readers find a
        # user's keys by the producers' partitioner, so a record whose key routes elsewhere (a
        # producer with another partitioner) is refused to the DLQ rather than stored where no
        # reader looks. None: the single layout, where any partition may hold any user.
        self._route_partitions = self.settings.redis_partitions
        self._stop = threading.Event()
        self.consumer: Source | None = None
        self.producer = None
        self.applied_total = 0
        self.dlq_total = 0
        self.rewinds_total = 0  # times the state was found older and the consumer sought back
        self.resume_skipped_total = 0  # records the stored offsets skipped past the group's commits
        # partition -> next offset of the last batch this process applied (the idle state check)
        self._applied_next: dict[int, int] = {}
        # partition -> the offset this process began the partition's state at, when it found none
        # stored: where to read again from if all of it vanishes (_older_than)
        self._origin: dict[int, int] = {}
        # partitions _older_than found with nothing stored any more: _rewind starts them afresh
        self._state_gone: set[int] = set()
        self._writes = 0
        self._last_state_check = time.monotonic()
        # One writer thread: batches apply in order, one at a time, while the next one is parsed.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-apply")
        self._pending: tuple[Future, _Batch] | None = None
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
                                    fetch_wait_max_ms=self.config.fetch_wait_max_ms, resumed=self._resumed)
        self.producer = make_producer(self.settings, client_id=f"recstream-{self.config.name}-dlq")
        if self._route_partitions is not None:
            n = self.consumer.partition_count()
            if n != self._route_partitions:
                self.close()
                raise StackError(f"processor {self.config.name}: topic {self.topic} has {n} partitions but the "
                                 f"partitioned Redis key layout is set for topic_partitions={self._route_partitions}; "
                                 "set RECSTREAM_TOPIC_PARTITIONS to the topic's partition count (readers locate a "
                                 "user's keys with it)")

    def run(self, max_idle_s: float | None = None, max_events: int | None = None) -> None:
        """Process until stopped; optionally until idle for max_idle_s or after max_events applied."""
        self._connect()
        recover = getattr(self.handler, "recover", None)
        if recover is not None:
            recover()  # e.g. publish an outbox a crashed run left behind
        tick = getattr(self.handler, "tick", None)
        freeze_heap_for_streaming()
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
            if self._pending is not None:
                try:
                    self.flush()  # commit the batch in flight (its state is already written)
                except Exception as e:  # its offsets are stored with the state; the next run resumes there
                    log.warning("processor %s: last batch not committed: %s", self.config.name, e)
            drain = getattr(self.handler, "drain", None)
            if drain is not None:
                try:
                    drain()
                except Exception as e:  # whatever is left stays in the outbox for the next run
                    log.warning("processor %s: drain on stop failed: %s", self.config.name, e)
            self.close()

    def step(self) -> int:
        """One poll -> DLQ -> apply -> commit cycle, pipelined: the batch polled here is parsed
        while the previous one is still being written (Redis works on another core meanwhile),
        then handed to the writer thread once that write is committed.

        Returns:
            records of the previous batch, now applied and committed (0 if none).
        """
        polled: dict[int, list[Record]] = self.consumer.poll(self.config.batch_max_records,
                                                             self.config.poll_timeout_ms / 1000)
        batch = self._parse(polled) if polled else None
        done = self.flush(also_dropped=batch)
        if done is None:
            return 0  # the state was rewound: this batch was read before the seek back, drop it
        if batch is not None:
            self._pending = (self._writer.submit(self._apply_with_retry, batch), batch)
        elif not done:
            self._check_state_while_idle()
        return done

    def flush(self, also_dropped: "_Batch | None" = None) -> int | None:
        """Wait for the batch being written and commit it.

        Args:
            also_dropped: a batch read after it, dropped too if the state turns out rewound.

        Returns:
            its record count (0 when none was pending), or None when it found the state older
            than the batch and the consumer was rewound.
        """
        if self._pending is None:
            return 0
        future, batch = self._pending
        self._pending = None
        stored = future.result()
        if stored is not None:
            # Read again from the stored offsets; a partition the state has no offset for
            # restarts where the dropped batches began.
            targets = dict(batch.first_offsets)
            for p, o in (also_dropped.first_offsets.items() if also_dropped else ()):
                targets.setdefault(p, o)
            targets.update(stored)
            self._rewind(targets)
            return None
        self._writes += 1
        if self.config.exit_after_writes is not None and self._writes >= self.config.exit_after_writes:
            log.warning("processor %s: exit_after_writes=%d reached: exiting after the state write, before the "
                        "Kafka commit of %s", self.config.name, self._writes, batch.next_offsets)
            os._exit(EXIT_AFTER_WRITES_RC)
        if batch.good and not getattr(self.handler, "measures_own_freshness", False):  # e.g. visible once published
            m.observe_freshness(self.config.name, time.time() * 1000 - np.fromiter(
                (se.kafka_ts_ms for se in batch.good), np.float64, len(batch.good)))
        self.consumer.commit(batch.next_offsets)
        self._applied_next.update(batch.next_offsets)
        return batch.n_records

    def _rewind(self, targets: dict[int, int]) -> None:
        """Seek the assigned partitions named in targets back to them (the state is older)."""
        for partition in self.consumer.assignment():
            if partition in targets:
                self.consumer.seek(partition, targets[partition])
                if partition in self._state_gone:
                    # nothing stored: the next batch of it begins its state again (_state_lost)
                    self._applied_next.pop(partition, None)
                else:
                    self._applied_next[partition] = targets[partition]
        self._state_gone.clear()
        self.rewinds_total += 1
        m.REWINDS.labels(self.config.name).inc()
        log.warning("processor %s: state restored older than the consumer position; rewound to %s",
                    self.config.name, targets)

    def _check_state_while_idle(self) -> None:
        """No records arrive, so no batch will find a rolled-back state: compare the stored
        offsets with what this process applied, at most every idle_state_check_s (_older_than)."""
        now = time.monotonic()
        if now - self._last_state_check < self.config.idle_state_check_s or not self._applied_next:
            return
        self._last_state_check = now
        try:
            stored = self.handler.stored_offsets(self.topic)
        except _TRANSIENT as e:  # Redis away: checked again on a later idle poll
            log.debug("processor %s: idle state check failed: %s", self.config.name, e)
            return
        assigned = set(self.consumer.assignment())
        behind = self._older_than({p: o for p, o in self._applied_next.items() if p in assigned}, stored)
        if behind:
            self._rewind(behind)

    def _resumed(self, skipped: dict[int, int]) -> None:
        """Assignment callback (see KafkaSource): records the stored offsets skipped."""
        n = sum(skipped.values())
        if n:
            self.resume_skipped_total += n
            m.RESUME_SKIPPED.labels(self.config.name).inc(n)
            log.info("processor %s: resuming past the group's committed offsets: %d records already applied "
                     "(stopped before their Kafka commit) skipped, per partition %s", self.config.name, n, skipped)

    def _parse(self, polled: dict[int, list[Record]]) -> "_Batch":
        """Parse a poll; invalid records go to the DLQ (flushed, so durable before any apply).

        Whatever decoding a record raises, that record goes to the DLQ with a reason and the loop
        goes on: `parse_event` promises only InvalidEvent, and anything else (a decoder bug, an
        exhausted stack) is caught here too, so one record can never stop a processor.
        """
        batch = _Batch()
        dead: list[tuple[bytes | None, bytes]] = []
        for partition, records in polled.items():
            for rec in records:
                try:
                    event = parse_event(rec.value)
                except InvalidEvent as e:
                    reason = e.reason
                except Exception as e:  # defence in depth: see the docstring
                    reason = f"decoder failed: {type(e).__name__}: {safe_text(str(e))}"
                    log.warning("processor %s: %s at %s[%d]@%d", self.config.name, reason, self.topic, partition,
                                rec.offset)
                else:
                    routed = (partition if self._route_partitions is None
                              else partition_for(event.user_id, self._route_partitions))
                    if routed == partition:
                        batch.good.append(SourcedEvent(event, partition, rec.offset, rec.timestamp_ms))
                        continue
                    reason = (f"user routes to partition {routed} (Kafka murmur2 over {self._route_partitions} "
                              f"partitions) but the record is on partition {partition}: the partitioned Redis "
                              "layout needs events keyed by user_id with the default partitioner")
                # The key travels along for locality, unless it alone would crowd out the value.
                key = rec.key if rec.key is None or len(rec.key) <= _DLQ_MAX_KEY_BYTES else None
                dead.append((key, dlq_record(rec.value, reason, self.topic, partition, rec.offset, self.config.name)))
            batch.next_offsets[partition] = records[-1].offset + 1
            batch.first_offsets[partition] = records[0].offset
            batch.n_records += len(records)
        if dead:
            self._send_dlq(dead)  # durable in the DLQ before the offsets move past them
            m.DLQ.labels(self.config.name).inc(len(dead))
            self.dlq_total += len(dead)
        return batch

    def _send_dlq(self, dead: list[tuple[bytes | None, bytes]]) -> None:
        """Write DLQ records and wait until every one is acknowledged, retrying those that failed
        (a Kafka outage stalls the processor, like a Redis outage, rather than losing a record).
        A processor stopped meanwhile raises: its offsets stay behind, the next run redoes it."""
        while dead:
            futures = []
            for key, value in dead:
                try:
                    futures.append(self.producer.send(self.settings.dlq_topic, key=key, value=value))
                except Exception as e:  # e.g. metadata timeout; retried below
                    futures.append(e)
            self.producer.flush()
            failed = [(rec, f) for rec, f in zip(dead, futures)
                      if isinstance(f, Exception) or (f is not None and f.failed())]
            if not failed:
                return
            err = failed[0][1] if isinstance(failed[0][1], Exception) else failed[0][1].exception
            m.RETRIES.labels(self.config.name).inc()
            log.warning("processor %s: %d DLQ writes failed (%s); retrying in %d ms", self.config.name, len(failed),
                        err, self.config.retry_backoff_ms)
            if self._stop.wait(self.config.retry_backoff_ms / 1000):
                raise StackError(f"processor {self.config.name}: stopped with {len(failed)} DLQ records unwritten "
                                 f"({err}); their offsets were not committed") from (err if isinstance(err, BaseException) else None)
            dead = [rec for rec, _ in failed]

    def _apply_with_retry(self, batch: "_Batch") -> dict[int, int] | None:
        """Apply a batch (writer thread), waiting out a Redis outage.

        Returns:
            None when applied, or the stored offsets to rewind to when the state came back older
            than the batch (see _state_lost).
        """
        while True:
            t0 = time.perf_counter()
            try:
                stored = self._state_lost(batch.first_offsets)
                if stored is not None:
                    return stored
                applied = self.handler.apply(self.topic, batch.good, batch.next_offsets)
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
        return None

    def _state_lost(self, first_offsets: dict[int, int]) -> dict[int, int] | None:
        """After a restart Redis may come back from its append-only file a little older than it
        was (fsync every second), or a promoted replica may lack the last writes its master
        acknowledged, with or without this process noticing an error. Offsets and state roll back
        together, so if the stored offsets now sit before this batch, the records in between must
        be read again: the batch is dropped and the consumer seeks back (to the offsets returned
        here, see _older_than). One small read per batch. A partition with no stored offset that
        this process has not applied starts where the consumer is, and that offset is its origin."""
        stored = self.handler.stored_offsets(self.topic)
        older = self._older_than(first_offsets, stored)
        if older:
            return {**stored, **older}
        for p, o in first_offsets.items():
            if p not in stored and p not in self._applied_next:
                self._origin[p] = o
        return None

    def _older_than(self, positions: dict[int, int], stored: dict[int, int]) -> dict[int, int]:
        """partition -> where to read again, for each partition whose state is older than its
        position here: the stored offset; or, when nothing is stored any more for a partition
        this process applied (a replica promoted before its master's first writes of the
        partition reached it), the partition's origin in this process, else the log's start (the
        state is empty: all of it must be applied again). Those are noted in _state_gone."""
        out = {}
        for p, o in positions.items():
            if p in stored:
                if stored[p] < o:
                    out[p] = stored[p]
            elif p in self._applied_next:
                out[p] = self._origin.get(p, 0)
                self._state_gone.add(p)
        return out

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
