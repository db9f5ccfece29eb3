"""The walking-skeleton processor: item popularity and each user's seen/recent items in Redis.

Keys (built by features/keys.py PopularityKeys, which serving reads with; `<t>` is the KeyLayout
tag: the prefix, or the event's partition hash tag on Redis Cluster):
  <t>:pop                 ZSET item -> weighted count of positive events (a shard per partition
                          when partitioned: readers sum the shards)
  <t>:seen:<user>         SET  items the user has interacted with (filters recommendations)
  <t>:recent:<user>       ZSET item -> last event ts (ms), capped at recent_items_max
"""

from __future__ import annotations

import redis

from features.keys import KeyLayout, PopularityKeys
from pipelines.stream.base import RedisTransactionalHandler, SourcedEvent
from recstream.events import EventType

# Explicit feedback counts more than a view; impressions are exposure, not interest.
WEIGHTS = {EventType.purchase: 3.0, EventType.like: 2.0, EventType.rating: 1.0, EventType.click: 1.0,
           EventType.view: 0.5, EventType.impression: 0.0}


class PopularityHandler(RedisTransactionalHandler):
    name = "popularity"

    def __init__(self, client: redis.Redis, prefix: str | KeyLayout = "rs", recent_items_max: int = 200):
        super().__init__(client, prefix)
        self.recent_items_max = recent_items_max
        self.keys = PopularityKeys(self.layout)

    def write(self, pipe, events: list[SourcedEvent]) -> None:
        k = self.keys
        tag = self.layout.tag(events[0].partition)  # every event of one call shares it
        pop: dict[str, float] = {}
        recent: dict[str, dict[str, int]] = {}
        for se in events:
            e = se.event
            w = WEIGHTS[e.type]
            if w > 0:
                pop[e.item_id] = pop.get(e.item_id, 0.0) + w
            if e.type != EventType.impression:
                recent.setdefault(e.user_id, {})[e.item_id] = e.ts
        for item, w in pop.items():
            pipe.zincrby(k.popular_shard(tag), w, item)
        for user, items in recent.items():
            seen, recent_key = k.seen(user, tag), k.recent(user, tag)
            pipe.sadd(seen, *items)
            pipe.zadd(recent_key, items, gt=True)
            pipe.zremrangebyrank(recent_key, 0, -self.recent_items_max - 1)
