"""The partitioner readers share with the producers: Kafka's Java murmur2, bit for bit."""

from __future__ import annotations

import pytest

from recstream.partitioning import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key,java", JAVA_MURMUR2.items())
def test_murmur2_is_the_java_clients(key, java):
    assert murmur2(key) == java & 0xFFFFFFFF


@pytest.mark.parametrize("key,java", JAVA_MURMUR2.items())
def test_partition_is_javas_to_positive_modulo(key, java):
    # Utils.toPositive(murmur2(keyBytes)) % numPartitions
    for n in (1, 4, 6, 7, 1024):
        assert partition_for(key, n) == (java & 0x7FFFFFFF) % n
    assert partition_for(key.decode(), 6) == partition_for(key, 6)  # str keys go as UTF-8


def test_partition_count_must_be_positive():
    with pytest.raises(ValueError, match="n_partitions must be >= 1, got 0"):
        partition_for("u1", 0)
