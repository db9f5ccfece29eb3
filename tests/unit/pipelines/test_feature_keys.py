"""The feature-writer's keys: unchanged with the single layout; with the partitioned one a user's
counters in the user's partition's slot and an item's counters sharded over every partition."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from features.keys import KeyLayout, offsets_key
from pipelines.stream.feature_writer import FeatureKeys


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_feature_writer_keys_keep_the_single_layout_and_shard_items_when_partitioned():
    single = FeatureKeys("rs")
    assert (single.user("u1"), single.item("i1"), single.dirty("online", "i"), single.fresh_marks) == (
        "rs:fw:u:u1", "rs:fw:i:i1", "rs:fw:dirty:online:i", "rs:fw:fresh")
    layout = KeyLayout("rs", 6)
    k = FeatureKeys(layout)
    tag = layout.user_tag("u1")
    assert _slot(k.user("u1")) == _slot(k.genres("u1")) == _slot(offsets_key(tag, "feature-writer", "t"))
    assert len({_slot(k.item("i1", t)) for t in layout.tags()}) == 6  # one shard of the item per partition
    with pytest.raises(ValueError, match="name the tag"):
        k.item("i1")
