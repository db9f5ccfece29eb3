"""Kafka helpers shared by processors, services and tools: topics, producers, DLQ records.

The producer is idempotent with `acks=all` (settings.kafka_acks), so a retried send never
duplicates a record in the log, and with the topics' min.insync.replicas (2 on a cluster of three
brokers or more) an acknowledged record is on two brokers before the producer hears of it: one
broker's crash loses nothing. Consumers use manual commits (see pipelines/stream).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterable

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.serializer import Serializer

from recstream.errors import StackError
from recstream.settings import Settings, get_settings

log = logging.getLogger(__name__)


def topic_replication(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for the topics we create on a cluster of
    `brokers` (the live ones it reports): the settings when set, else min(3, brokers) and 2 from
    a factor of 3 on (so acks=all survives one broker down while a write still needs two copies).

    Raises:
        StackError: the replication factor asked for exceeds the brokers, or min.insync.replicas
            the factor, with the values.
    """
    rf = settings.kafka_replication_factor or min(3, brokers)
    if rf > brokers:
        raise StackError(f"kafka_replication_factor ({rf}) must be <= the brokers of the cluster at "
                         f"{settings.kafka_bootstrap} ({brokers})")
    isr = settings.kafka_min_insync_replicas or (2 if rf >= 3 else 1)
    if isr > rf:  # settings check this when both are set; here the factor may come from the cluster
        raise StackError(f"kafka_min_insync_replicas ({isr}) must be <= the replication factor ({rf}, for "
                         f"{brokers} broker(s) at {settings.kafka_bootstrap}): no acks=all write could succeed")
    return rf, isr


def ensure_topics(settings: Settings | None = None, partitions: int | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Create the platform's topics when missing (idempotent), replicated as topic_replication
    says for the brokers the cluster reports. Returns the topic names. A topic that exists already
    is left as it is (changing its replication needs a partition reassignment); one with fewer
    replicas than asked for is logged."""
    s = settings or get_settings()
    n = partitions or s.topic_partitions
    names = [s.events_topic, s.dlq_topic, s.impressions_topic, *extra]
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, client_id="recstream-admin", request_timeout_ms=15000)
    try:
        rf, isr = topic_replication(s, len(admin.describe_cluster()["brokers"]))
        existing = set(admin.list_topics())
        missing = [t for t in names if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name=t, num_partitions=n, replication_factor=rf,
                                              topic_configs={"min.insync.replicas": str(isr)}) for t in missing])
            except TopicAlreadyExistsError:
                pass  # a concurrent creator won the race; the topic is what we wanted
        # Metadata propagates asynchronously; wait so a producer right after us sees the topics.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not set(names) <= set(admin.list_topics()):
            time.sleep(0.2)
        for t in (t for t in names if t in existing):
            described = admin.describe_topics([t])[0]
            have = min((len(p["replica_nodes"]) for p in described["partitions"]), default=rf)
            if have < rf:
                log.warning("topic %s has %d replica(s), %d wanted: it was created before the cluster grew; "
                            "reassign its partitions (kafka-reassign-partitions) or recreate it", t, have, rf)
    finally:
        admin.close()
    return names


# librdkafka's own log lines, routed through Python logging (instead of its direct writes to
# stderr, which landed inside progress bars) with the transient retries a user cannot act on
# dropped: right after a broker starts, an idempotent producer logs "Failed to acquire
# idempotence PID ...: Coordinator load in progress: retrying" until the broker is ready.
LIBRDKAFKA_LOG = logging.getLogger("recstream.librdkafka")
_TRANSIENT_LIBRDKAFKA = ("retrying", "coordinator load in progress", "coordinator not available", "not coordinator")


def _drop_transient_librdkafka(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR or LIBRDKAFKA_LOG.isEnabledFor(logging.DEBUG):
        return True
    msg = record.getMessage().lower()
    return not any(t in msg for t in _TRANSIENT_LIBRDKAFKA)


LIBRDKAFKA_LOG.addFilter(_drop_transient_librdkafka)


class StrKeySerializer(Serializer):
    """UTF-8 record keys (user ids); bytes pass through."""

    def serialize(self, topic, headers, data):
        return data.encode("utf-8") if isinstance(data, str) else data


def make_producer(settings: Settings | None = None, **overrides) -> KafkaProducer:
    """An idempotent, acks=all producer (settings.kafka_acks) with string keys and bytes values."""
    s = settings or get_settings()
    acks_all = s.kafka_acks == "all"
    cfg = dict(
        bootstrap_servers=s.kafka_bootstrap,
        acks="all" if acks_all else 1,
        enable_idempotence=acks_all,  # Kafka's idempotent producer requires acks=all
        linger_ms=5,
        batch_size=256 * 1024,
        compression_type=None,
        key_serializer=StrKeySerializer(),
        client_id="recstream-producer",
    )
    cfg.update(overrides)
    try:
        return KafkaProducer(**cfg)
    except Exception as e:
        raise StackError(f"cannot connect a Kafka producer to {s.kafka_bootstrap}: {e}") from e


def make_bulk_producer(settings: Settings | None = None, **overrides):
    """A librdkafka producer for bulk loads (datasets, replays): idempotent, acks=all (as
    settings.kafka_acks says), and the Java client's murmur2 partitioner, so a user lands on the
    same partition as with `make_producer` (the processors rely on one partition per user). It
    uses about a tenth of the CPU per record of kafka-python's producer."""
    from confluent_kafka import KafkaException, Producer

    s = settings or get_settings()
    acks_all = s.kafka_acks == "all"
    cfg = {"bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": acks_all, "acks": s.kafka_acks,
           "partitioner": "murmur2_random", "linger.ms": 5, "batch.size": 256 * 1024,
           "client.id": "recstream-bulk-producer", "logger": LIBRDKAFKA_LOG, **overrides}
    try:
        return Producer(cfg)
    except KafkaException as e:
        raise StackError(f"cannot create a Kafka producer for {s.kafka_bootstrap}: {e}") from e


# Kafka's default largest record (broker message.max.bytes, kafka-python max_request_size) is
# 1 MiB; a DLQ value stays well below it whatever it carries.
DLQ_MAX_BYTES = 900_000


def dlq_record(raw: bytes | None, error: str, topic: str, partition: int, offset: int, processor: str,
               max_bytes: int = DLQ_MAX_BYTES) -> bytes:
    """A DLQ value: the original bytes (as text when UTF-8, else base64), the error and the source.

    An original too large for `max_bytes` (escaped or base64, it grows) is cut to fit, as base64,
    with `original_truncated`, its full length `original_bytes` and `original_sha256`, so a DLQ
    write can never fail for size; the source offset still locates the whole record.
    """
    import base64
    import hashlib

    raw = raw or b""
    error = error if len(error) <= 2000 else error[:1997] + "..."
    try:
        original, encoding, extra = raw.decode("utf-8"), "utf-8", {}
    except UnicodeDecodeError:
        original, encoding, extra = base64.b64encode(raw).decode("ascii"), "base64", {}

    def build() -> bytes:
        return json.dumps({
            "error": error,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "processor": processor,
            "original": original,
            "original_encoding": encoding,
            **extra,
            "ts": int(time.time() * 1000),
        }).encode("utf-8")

    out = build()
    if len(out) > max_bytes:
        keep = max(0, (max_bytes - 2000 - len(error) * 6) * 3 // 4)  # base64: 4 bytes per 3; error escapes <= 6x
        original, encoding = base64.b64encode(raw[:keep]).decode("ascii"), "base64"
        extra = {"original_truncated": True, "original_bytes": len(raw), "original_sha256": hashlib.sha256(raw).hexdigest()}
        out = build()
    return out


def group_assignment(bootstrap: str, group_id: str, topic: str) -> dict[str, list[int]]:
    """member id -> the partitions of `topic` the consumer group assigned it (members without any
    left out), as the group coordinator describes it; {} while no coordinator answers (a new
    group's coordinator is still loading: callers poll). Reads without joining the group."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group_id], request_timeout=10)[group_id].result(timeout=15)
    except KafkaException:
        return {}
    out = {}
    for member in desc.members:
        parts = sorted(tp.partition for tp in (member.assignment.topic_partitions if member.assignment else [])
                       if tp.topic == topic)
        if parts:
            out[member.member_id] = parts
    return out
