"""Redis keys that more than one package reads or writes, each built in one place.

The popularity processor (pipelines/stream/popularity.py) writes them and serving
(services/inputs.py) reads them, so the builder lives below both. Keys one package owns alone
keep their builder there (`FeatureKeys` in pipelines/stream/feature_writer.py, `RedisBseStore`'s
key methods, `RedisItemFeatures.key`).

    <t>:pop                 ZSET item -> weighted count of positive events (one shard per tag)
    <t>:seen:<user>         SET  items the user has interacted with (filters recommendations)
    <t>:recent:<user>       ZSET item -> last event ts (ms), capped at recent_items_max
    <t>:offsets:<processor>:<topic>   HASH partition -> next offset to apply (stored with the state)

`<t>` is a KeyLayout tag. Single layout (one Redis, the default): the prefix, one keyspace.
Partitioned layout (Redis Cluster): `{<prefix>:p<p>}`, a hash tag per Kafka partition p, so that
everything a processor writes for an event of partition p (the state and the offsets of p) lies
in one cluster slot and one MULTI/EXEC still covers it. A user's keys carry the tag of the
partition the producers' partitioner sends the user to (recstream/partitioning.py). Item-keyed
state that every partition updates (popularity) is kept as one shard per tag, each updated in its
partition's transaction, and readers sum the shards: exact however many partitions touch an item.
"""

from __future__ import annotations

from dataclasses import dataclass

from recstream.partitioning import partition_for


@dataclass(frozen=True)
class KeyLayout:
    """Where a processor's keys live.

    Args:
        prefix: Settings.redis_prefix.
        partitions: None for the single layout; else the events topic's partition count, and
            every tag is one partition's hash tag.
    """

    prefix: str
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"KeyLayout partitions must be >= 1 or None, got {self.partitions}")

    @classmethod
    def from_settings(cls, s) -> "KeyLayout":
        return cls(s.redis_prefix, s.redis_partitions)

    @property
    def partitioned(self) -> bool:
        return self.partitions is not None

    def tag(self, partition: int | None) -> str:
        """Key head for the state of Kafka `partition` (ignored by the single layout)."""
        if self.partitions is None:
            return self.prefix
        if partition is None or not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition!r} is outside the layout's {self.partitions} partitions")
        return f"{{{self.prefix}:p{partition}}}"

    def tags(self) -> list[str]:
        """Every distinct tag: readers of sharded state visit each."""
        if self.partitions is None:
            return [self.prefix]
        return [self.tag(p) for p in range(self.partitions)]

    def user_partition(self, user_id: str) -> int | None:
        """The Kafka partition the producers send this user's events to (None: single layout)."""
        return None if self.partitions is None else partition_for(user_id, self.partitions)

    def user_tag(self, user_id: str) -> str:
        return self.tag(self.user_partition(user_id))

    def scan_patterns(self, rest: str) -> list[str]:
        """SCAN MATCH patterns for `<tag>:<rest>` over every tag."""
        if self.partitions is None:
            return [f"{self.prefix}:{rest}"]
        return [f"{{{self.prefix}:p*}}:{rest}"]


class PopularityKeys:
    """The popularity processor's keys (see the module docstring)."""

    def __init__(self, layout: KeyLayout | str):
        self.layout = layout if isinstance(layout, KeyLayout) else KeyLayout(layout)

    def popular_shard(self, tag: str) -> str:
        return f"{tag}:pop"

    @property
    def popular_shards(self) -> list[str]:
        return [self.popular_shard(t) for t in self.layout.tags()]

    @property
    def popular(self) -> str:
        """The single layout's one popularity ZSET."""
        if self.layout.partitioned:
            raise ValueError("a partitioned layout keeps popularity in shards (popular_shards)")
        return self.popular_shard(self.layout.prefix)

    def seen(self, user_id: str, tag: str | None = None) -> str:
        """`tag`: the writer's (its record's partition); readers leave it to the partitioner."""
        return f"{tag or self.layout.user_tag(user_id)}:seen:{user_id}"

    def recent(self, user_id: str, tag: str | None = None) -> str:
        return f"{tag or self.layout.user_tag(user_id)}:recent:{user_id}"


def offsets_key(prefix: str, processor: str, topic: str) -> str:
    """Where a stream processor stores its next offsets for `topic` in the single layout
    (pipelines/stream/base.py); `prefix` is a KeyLayout tag in the partitioned one."""
    return f"{prefix}:offsets:{processor}:{topic}"
