"""feature-writer: rolling user and item features from the event stream into Feast.

Exactly-once effect in two steps:

1. Counters. Per entity, a Redis hash of event-time hour buckets (`<kind>:<hour>` -> count) plus
   the latest event time, updated in the same MULTI/EXEC as the consumer offsets
   (RedisTransactionalHandler): a redelivered record is skipped, so every event is counted once.
   The same transaction bumps the touched entities in two "dirty" hashes (entity -> change
   counter), an outbox.
2. Publication (pipelines/stream/feature_publisher.py). Features are *absolute* values computed
   from the counters, so writing them twice is harmless. A publisher pushes the dirty entities to
   the Feast online store and the fast item-feature blobs as often as it can (a push costs per
   row, not per event, so changes made during one publication coalesce into the next), and to
   the offline store every `offline_flush_s` (Feast's file offline store rewrites its parquet
   file on every write). An entity leaves the outbox only if its change counter is still the one
   read before publishing, so a concurrent newer change is never lost. A crash between the two
   steps leaves the entities dirty and the next publication pushes them: nothing lost, no count
   applied twice.
   The publisher runs inside the writer (`publisher=`, one process) or as its own process
   (`recstream process feature-publisher`): Feast's Python push costs about as much per second
   as counting the events, so a separate process lets each keep up with 20k events/s.
   Known limit with several publishers: two may publish the same item at once and land in either
   order, leaving the older value until the item's next change republishes it. So several writer
   instances (one consumer group, e.g. scaled out on a Redis Cluster) run with `--publish
   separate` and one `feature-publisher` (it reads every partition's outbox).

Offline history (a publisher with `offline_history=True`, `--offline-history`): for a dataset
streamed in bulk to train on, `apply` commits each batch in `segments` in which no entity has two
distinct event times and the publisher records every touched entity's state after each, so the
offline store gets a row per entity and event time (see pipelines/stream/feature_publisher.py).

Windows are event-time windows at hour resolution, relative to the entity's latest event:
`*_1h` is the latest hour bucket, `*_24h` the last 24 buckets, `*_7d` the last 168. Older buckets
are pruned at publication.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import defaultdict

import redis

from features.keys import KeyLayout
from pipelines.stream.base import RedisTransactionalHandler, SourcedEvent
from recstream.events import EventType
from recstream.redis_io import is_cluster

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
POPULARITY_HALF_LIFE_H = 24.0  # decayed engagement: yesterday counts half as much as now
RECENT_GENRES = 5

# What each event type counts as. Ratings and views are engagement without an impression;
# a like, a purchase or a rating of 4+ also counts as a like.
_KIND = {EventType.impression: "imp", EventType.click: "clk", EventType.view: "clk", EventType.purchase: "clk",
         EventType.rating: "clk", EventType.like: "lik"}

# One call applies a whole batch (client-side per-command overhead, not Redis, bounds a Python
# writer): every key it touches is in KEYS (KEYS[1] the freshness marks; a Redis Cluster routes and
# checks a script by its KEYS), and ARGV[1] is JSON naming them by index: {"incr": [[k, field,
# n]...], "span": [[k, max_ts, min_ts]...], "genres": [[k, [genre...]]...], "dirty": [[k, field]...],
# "trim": n}; ARGV[2], when not empty, is a freshness mark appended to KEYS[1] (kept to the last
# ARGV[3] marks).
_APPLY_SCRIPT = """
local b = cjson.decode(ARGV[1])
for _, x in ipairs(b.incr) do redis.call('HINCRBY', KEYS[x[1]], x[2], x[3]) end
for _, x in ipairs(b.span) do
  local k = KEYS[x[1]]
  local cur = redis.call('HGET', k, 'ts')
  if (not cur) or x[2] > tonumber(cur) then redis.call('HSET', k, 'ts', x[2]) end
  local first = redis.call('HGET', k, 'first')
  if (not first) or x[3] < tonumber(first) then redis.call('HSET', k, 'first', x[3]) end
end
for _, x in ipairs(b.genres) do
  redis.call('LPUSH', KEYS[x[1]], unpack(x[2]))
  redis.call('LTRIM', KEYS[x[1]], 0, b.trim)
end
for _, x in ipairs(b.dirty) do redis.call('HINCRBY', KEYS[x[1]], x[2], 1) end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
end
return 1
"""

def _kinds(e) -> list[str]:
    kinds = [_KIND[e.type]]
    if e.type is EventType.purchase or (e.type is EventType.rating and e.value >= 4.0):
        kinds.append("lik")
    return kinds


def segments(events: list[SourcedEvent]) -> list[list[SourcedEvent]]:
    """Split a batch, merged across partitions by event time (each partition's order kept), into
    the fewest runs in which no user and no item has two distinct event times: after each run,
    every touched entity's state is its state as of one event time (offline history)."""
    by_partition: dict[int, list[SourcedEvent]] = defaultdict(list)
    for se in events:
        by_partition[se.partition].append(se)
    merged = events if len(by_partition) == 1 else heapq.merge(*by_partition.values(), key=lambda se: se.event.ts)
    out: list[list[SourcedEvent]] = []
    current: list[SourcedEvent] = []
    ts_of: dict[tuple[str, str], int] = {}
    for se in merged:
        e = se.event
        ku, ki = ("u", e.user_id), ("i", e.item_id)
        if ts_of.get(ku, e.ts) != e.ts or ts_of.get(ki, e.ts) != e.ts:
            out.append(current)
            current, ts_of = [], {}
        current.append(se)
        ts_of[ku] = ts_of[ki] = e.ts
    if current:
        out.append(current)
    return out


class FeatureKeys:
    """Redis key layout shared by the writer and the publisher.

    `tag` is a KeyLayout tag (features/keys.py): the writer passes its events' partition's; a
    reader leaves a user's to the partitioner. Items are updated by every partition, so with the
    partitioned layout each tag holds a shard of an item's counters (`item(i, tag)`), which the
    publisher sums; the outbox and the freshness marks are per tag too.
    """

    def __init__(self, layout: KeyLayout | str):
        self.layout = layout if isinstance(layout, KeyLayout) else KeyLayout(layout)
        self.prefix = self.layout.prefix

    def _tag(self, tag: str | None) -> str:
        if tag is None:
            if self.layout.partitioned:
                raise ValueError("the partitioned layout keeps this per partition: name the tag")
            return self.prefix
        return tag

    def user(self, u: str, tag: str | None = None) -> str:
        return f"{tag or self.layout.user_tag(u)}:fw:u:{u}"

    def item(self, i: str, tag: str | None = None) -> str:
        return f"{self._tag(tag)}:fw:i:{i}"

    def genres(self, u: str, tag: str | None = None) -> str:
        return f"{tag or self.layout.user_tag(u)}:fw:ug:{u}"

    def dirty(self, target: str, entity: str, tag: str | None = None) -> str:
        return f"{self._tag(tag)}:fw:dirty:{target}:{entity}"

    def fresh_marks_at(self, tag: str) -> str:
        return f"{tag}:fw:fresh"

    @property
    def fresh_marks(self) -> str:
        """The single layout's freshness marks."""
        return self.fresh_marks_at(self._tag(None))


def encode_marks(ts_ms: list[int]) -> str:
    """Kafka timestamps of applied events, compact: "base,delta,delta,..." (ms)."""
    base = min(ts_ms)
    return ",".join([str(base), *(str(t - base) for t in ts_ms)])


def decode_marks(mark: str) -> list[int]:
    base, *deltas = (int(x) for x in mark.split(","))
    return [base + d for d in deltas]


class FeatureWriterHandler(RedisTransactionalHandler):
    """Counters + outbox in Redis, in the offsets transaction; publication by a FeaturePublisher.

    Args:
        client: Redis for counters and outbox (decode_responses=True).
        publisher: a FeaturePublisher run inline after every batch and on idle polls, or None
            when a separate `feature-publisher` process publishes the outbox.
        freshness_sample_every: events whose Kafka offset is a multiple of this leave their
            timestamp for the publisher, which measures event -> readable online (every event is
            equally likely to be sampled, so quantiles stay unbiased at a bounded cost).
        max_marks: freshness marks kept when no publisher consumes them.
    """

    name = "feature-writer"
    measures_own_freshness = True  # visible means published, which the publisher measures

    def __init__(self, client: redis.Redis, prefix: str | KeyLayout = "rs", publisher=None,
                 freshness_sample_every: int = 4, max_marks: int = 2000):
        super().__init__(client, prefix)
        if freshness_sample_every < 1:
            raise ValueError(f"freshness_sample_every must be >= 1, got {freshness_sample_every}")
        self.keys = FeatureKeys(self.layout)
        self._cluster = is_cluster(client)
        self.publisher = publisher
        self.freshness_sample_every = freshness_sample_every
        self.max_marks = max_marks
        self._apply_script = client.register_script(_APPLY_SCRIPT)

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        """As RedisTransactionalHandler.apply; with a publisher keeping offline history, in segments
        (see segments()) each committed with its offsets, the touched entities' states recorded
        after each one."""
        if not events or self.publisher is None or not getattr(self.publisher, "offline_history", False):
            return super().apply(topic, events, next_offsets)
        applied, seen = 0, {}
        segs = segments(events)
        for k, seg in enumerate(segs):
            for se in seg:
                seen[se.partition] = se.offset + 1  # each partition's records stay in order across segments
            n = super().apply(topic, seg, next_offsets if k == len(segs) - 1 else dict(seen))
            if n:
                self.publisher.record_history([se.event.user_id for se in seg], [se.event.item_id for se in seg])
            applied += n
        return applied

    # step 1: counters, inside the offsets transaction
    def write(self, pipe, events: list[SourcedEvent]) -> None:
        k = self.keys
        tag = self.layout.tag(events[0].partition)  # every event of one call shares it
        incr: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        span: dict[str, list[int]] = {}
        genres: dict[str, list[str]] = defaultdict(list)
        users, items = set(), set()
        for se in events:
            e = se.event
            h = e.ts // HOUR_MS
            ku, ki = k.user(e.user_id, tag), k.item(e.item_id, tag)
            for kind in _kinds(e):
                incr[ku][f"{kind}:{h}"] += 1
                incr[ki][f"{kind}:{h}"] += 1
            for key in (ku, ki):
                lo_hi = span.get(key)
                if lo_hi is None:
                    span[key] = [e.ts, e.ts]
                elif e.ts < lo_hi[0]:
                    lo_hi[0] = e.ts
                elif e.ts > lo_hi[1]:
                    lo_hi[1] = e.ts
            if e.context and e.type is not EventType.impression:
                genre = e.context.get("genre") or e.context.get("category")
                if genre:
                    genres[e.user_id].append(genre)
            users.add(e.user_id)
            items.add(e.item_id)
        keys: dict[str, int] = {k.fresh_marks_at(tag): 1}  # key -> its KEYS index (1-based)

        def ix(key: str) -> int:
            return keys.setdefault(key, len(keys) + 1)

        batch = {
            "incr": [[ix(key), f, n] for key, fields in incr.items() for f, n in fields.items()],
            "span": [[ix(key), hi, lo] for key, (lo, hi) in span.items()],
            "genres": [[ix(k.genres(u, tag)), gs] for u, gs in genres.items()],
            "dirty": [[ix(k.dirty(t, ent, tag)), x] for t in ("online", "offline")
                      for ent, ids in (("u", users), ("i", items)) for x in ids],
            "trim": 4 * RECENT_GENRES,
        }
        every = self.freshness_sample_every
        sampled = [se.kafka_ts_ms for se in events if se.offset % every == 0]
        args = [json.dumps(batch), encode_marks(sampled) if sampled else "", self.max_marks]
        if self._cluster:
            # A cluster pipeline refuses EVALSHA; EVAL by its generic path still queues in the
            # transaction, checked to one slot, and needs no script cache on a promoted replica.
            pipe.execute_command("EVAL", _APPLY_SCRIPT, len(keys), *keys, *args)
        else:
            self._apply_script(keys=list(keys), args=args, client=pipe)

    def tick(self) -> None:
        """The processor calls this after every poll, from its main thread, while the next batch
        may be applying on the writer thread: the outbox makes the two safe to overlap."""
        if self.publisher is not None:
            self.publisher.tick()

    def recover(self) -> None:
        if self.publisher is not None:
            self.publisher.flush_all()  # an outbox a crashed run left behind

    drain = recover
