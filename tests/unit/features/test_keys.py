"""The key layout: with the partitioned layout everything a processor writes for partition p, and
everything a reader looks up for a user of partition p, lies in one Redis Cluster hash slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from features.keys import KeyLayout, PopularityKeys, offsets_key
from recstream.partitioning import partition_for


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_single_layout_keeps_the_historic_keys():
    k = PopularityKeys(KeyLayout("rs"))
    assert (k.popular, k.popular_shards, k.seen("u1"), k.recent("u1")) == ("rs:pop", ["rs:pop"], "rs:seen:u1",
                                                                            "rs:recent:u1")
    assert KeyLayout("rs").tag(3) == "rs" and KeyLayout("rs").tags() == ["rs"]


def test_partitioned_layout_puts_a_users_keys_in_its_partitions_slot():
    layout = KeyLayout("rs", 6)
    k = PopularityKeys(layout)
    for user in (f"u{i}" for i in range(200)):
        p = partition_for(user, 6)
        assert layout.user_partition(user) == p
        slot = _slot(offsets_key(layout.tag(p), "popularity", "recstream.events"))
        assert {_slot(k.seen(user)), _slot(k.recent(user)), _slot(k.popular_shard(layout.tag(p)))} == {slot}
    # six partitions, six distinct slots, one popularity shard each
    assert len({_slot(s) for s in k.popular_shards}) == 6 == len(k.popular_shards)
    with pytest.raises(ValueError, match="popular_shards"):
        _ = k.popular


@pytest.mark.parametrize("partition", [None, -1, 6])
def test_a_partition_outside_the_layout_is_refused(partition):
    with pytest.raises(ValueError, match=f"partition {partition!r} is outside the layout's 6 partitions"):
        KeyLayout("rs", 6).tag(partition)

