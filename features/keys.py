"""Redis keys that more than one package reads or writes, each built in one place.

The popularity processor (pipelines/stream/popularity.py) writes them and serving
(services/inputs.py) reads them, so the builder lives below both. Keys one package owns alone
keep their builder there (`FeatureKeys` in pipelines/stream/feature_writer.py, `RedisBseStore`'s
key methods, `RedisItemFeatures.key`).

    <p>:pop                 ZSET item -> weighted count of positive events
    <p>:seen:<user>         SET  items the user has interacted with (filters recommendations)
    <p>:recent:<user>       ZSET item -> last event ts (ms), capped at recent_items_max
    <p>:offsets:<processor>:<topic>   HASH partition -> next offset to apply (stored with the state)
"""

from __future__ import annotations


class PopularityKeys:
    """The popularity processor's keys under one prefix (Settings.redis_prefix)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    @property
    def popular(self) -> str:
        return f"{self.prefix}:pop"

    def seen(self, user_id: str) -> str:
        return f"{self.prefix}:seen:{user_id}"

    def recent(self, user_id: str) -> str:
        return f"{self.prefix}:recent:{user_id}"


def offsets_key(prefix: str, processor: str, topic: str) -> str:
    """Where a stream processor stores its next offsets for `topic` (pipelines/stream/base.py)."""
    return f"{prefix}:offsets:{processor}:{topic}"
