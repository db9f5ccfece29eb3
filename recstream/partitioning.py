"""Which Kafka partition a record key (a user id) lands on: the one definition readers share.

Producers send events keyed by user id with Kafka's default partitioner (the Java client's
murmur2: kafka-python's DefaultPartitioner in `make_producer`, librdkafka's `murmur2_random` in
`make_bulk_producer`, both `(murmur2(key) & 0x7fffffff) % n_partitions` for a non-null key). The
stream processors keep each partition's state under that partition's Redis hash tag
(features/keys.py KeyLayout), so a reader that wants a user's keys must compute the same
partition from the same bytes. Keys are UTF-8, as StrKeySerializer and produce_events send them.
"""

from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2 as _java_murmur2


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of the key bytes, as the Java client computes it (an unsigned 32-bit value)."""
    return _java_murmur2(key) & 0xFFFFFFFF


# Pure-Python murmur2 costs about 5 us a key; processors and readers ask for the same users over
# and over, and a cached answer costs about 0.1 us.
@lru_cache(maxsize=1 << 17)
def partition_for(key: str | bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null record key.

    Args:
        key: the record key (str is encoded as UTF-8, as the producers do).
        n_partitions: the topic's partition count.
    """
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % n_partitions
