"""feature-writer: rolling user and item features from the event stream into Feast.

Exactly-once effect in two steps:

1. Counters. Per entity, a Redis hash of event-time hour buckets (`<kind>:<hour>` -> count) plus
   the latest event time, updated in the same MULTI/EXEC as the consumer offsets
   (RedisTransactionalHandler): a redelivered record is skipped, so every event is counted once.
   The same transaction bumps the touched entities in two "dirty" hashes (entity -> change
   counter), an outbox.
2. Publication. Features are *absolute* values computed from the counters, so writing them twice
   is harmless. After each batch the dirty-online set is pushed to the Feast online store and the
   fast item-feature blobs, then removed from the set; the dirty-offline set is pushed to the
   offline store every `offline_flush_s` (Feast's file offline store rewrites its parquet file
   on every write, so per-batch offline pushes would grow quadratically). An entity leaves the
   outbox only if its change counter is still the one read before publishing, so a concurrent
   processor's newer change is never lost. A crash between the two steps leaves the entities
   dirty, and the next run publishes them: nothing lost, no count applied twice.
   Known limit with several processor instances: items are touched from every partition, and
   two instances publishing the same item at once may land in either order, leaving the older
   value until the item's next change republishes it (users are owned by one partition).

Windows are event-time windows at hour resolution, relative to the entity's latest event:
`*_1h` is the latest hour bucket, `*_24h` the last 24 buckets, `*_7d` the last 168. Older buckets
are pruned at publication.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np
import pandas as pd
import redis

from features.item_features import RedisItemFeatures
from features.repo.definitions import ITEM_FEATURES, TIMESTAMP_FIELD, USER_FEATURES
from pipelines.stream import metrics as m
from pipelines.stream.base import RedisTransactionalHandler, SourcedEvent
from recstream.events import EventType

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
WEEK_H = 168
POPULARITY_HALF_LIFE_H = 24.0  # decayed engagement: yesterday counts half as much as now
RECENT_GENRES = 5

# What each event type counts as. Ratings and views are engagement without an impression;
# a like, a purchase or a rating of 4+ also counts as a like.
_KIND = {EventType.impression: "imp", EventType.click: "clk", EventType.view: "clk", EventType.purchase: "clk",
         EventType.rating: "clk", EventType.like: "lik"}

PUBLISH_LATENCY = m.Histogram("recstream_feature_publish_seconds", "feature publication latency (Feast online push)",
                              ["target"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# One call applies a whole batch (client-side per-command overhead, not Redis, bounds a Python
# writer): ARGV[1] is JSON {"incr": [[key, field, n]...], "span": [[key, max_ts, min_ts]...],
# "genres": [[key, [genre...]]...], "dirty": [[key, field]...], "trim": n}.
_APPLY_SCRIPT = """
local b = cjson.decode(ARGV[1])
for _, x in ipairs(b.incr) do redis.call('HINCRBY', x[1], x[2], x[3]) end
for _, x in ipairs(b.span) do
  local cur = redis.call('HGET', x[1], 'ts')
  if (not cur) or x[2] > tonumber(cur) then redis.call('HSET', x[1], 'ts', x[2]) end
  local first = redis.call('HGET', x[1], 'first')
  if (not first) or x[3] < tonumber(first) then redis.call('HSET', x[1], 'first', x[3]) end
end
for _, x in ipairs(b.genres) do
  redis.call('LPUSH', x[1], unpack(x[2]))
  redis.call('LTRIM', x[1], 0, b.trim)
end
for _, x in ipairs(b.dirty) do redis.call('HINCRBY', x[1], x[2], 1) end
return 1
"""

# Aggregate many counter hashes server-side in one call: per hash, the window sums of every kind
# (1h, 24h, 7d), the decayed engagement and the latest/first event times, pruning buckets older
# than 7d. Shipping nine numbers instead of every bucket keeps a Python writer fast. The Python
# functions user_features/item_features define the same semantics and are the reference the
# tests compare this with. KEYS: hashes then genre lists; ARGV: n_hashes, trim, half_life_h.
_AGG_SCRIPT = """
local nh, trim, half = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  if i <= nh then
    local f = redis.call('HGETALL', KEYS[i])
    local ts, first = '0', nil
    local buckets = {}
    for j = 1, #f, 2 do
      local name = f[j]
      if name == 'ts' then ts = f[j + 1]
      elseif name == 'first' then first = f[j + 1]
      else
        local kind, h = string.match(name, '^(%a+):(%-?%d+)$')
        if kind then buckets[#buckets + 1] = {kind, tonumber(h), tonumber(f[j + 1]), name} end
      end
    end
    local now_h = math.floor(tonumber(ts) / 3600000)
    local w = {imp = {0, 0, 0}, clk = {0, 0, 0}, lik = {0, 0, 0}}
    local pop, stale = 0, {}
    for _, b in ipairs(buckets) do
      local kind, h, c = b[1], b[2], b[3]
      if h <= now_h - 168 then stale[#stale + 1] = b[4]
      elseif w[kind] then
        local acc = w[kind]
        acc[3] = acc[3] + c
        if h > now_h - 24 then acc[2] = acc[2] + c end
        if h > now_h - 1 then acc[1] = acc[1] + c end
        if kind ~= 'imp' then pop = pop + c * math.pow(0.5, (now_h - h) / half) end
      end
    end
    if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
    out[i] = {ts, first or ts, w.imp[1], w.imp[2], w.imp[3], w.clk[1], w.clk[2], w.clk[3],
              w.lik[1], w.lik[2], w.lik[3], string.format('%.17g', pop)}
  else
    out[i] = redis.call('LRANGE', KEYS[i], 0, trim)
  end
end
return out
"""

# Remove outbox fields whose change counter is still the one we published (ARGV: field, value, ...).
_CLEAN_SCRIPT = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n
"""


def _kinds(e) -> list[str]:
    kinds = [_KIND[e.type]]
    if e.type is EventType.purchase or (e.type is EventType.rating and e.value >= 4.0):
        kinds.append("lik")
    return kinds


def _counts(fields: dict[str, str]) -> tuple[dict[str, dict[int, int]], int, int]:
    """Parse a counter hash -> ({kind: {hour: count}}, latest ts ms, first ts ms)."""
    counts: dict[str, dict[int, int]] = defaultdict(dict)
    for f, v in fields.items():
        kind, sep, hour = f.partition(":")
        if sep:
            counts[kind][int(hour)] = int(v)
    return counts, int(fields.get("ts", 0)), int(fields.get("first", fields.get("ts", 0)))


def _window(counts: dict[int, int], now_h: int, hours: int) -> int:
    return sum(c for h, c in counts.items() if h > now_h - hours)


def user_features(fields: dict[str, str], genres: list[str]) -> dict[str, Any]:
    """Feature row of one user from its counter hash and recent genres (most recent first)."""
    counts, ts, _ = _counts(fields)
    now_h = ts // HOUR_MS
    row: dict[str, Any] = {}
    for kind, name in (("imp", "impressions"), ("clk", "clicks"), ("lik", "likes")):
        for win, hours in (("1h", 1), ("24h", 24), ("7d", WEEK_H)):
            row[f"{name}_{win}"] = _window(counts.get(kind, {}), now_h, hours)
    row["ctr_24h"] = row["clicks_24h"] / row["impressions_24h"] if row["impressions_24h"] else 0.0
    row["ctr_7d"] = row["clicks_7d"] / row["impressions_7d"] if row["impressions_7d"] else 0.0
    row["recent_genres"] = "|".join(genres)
    row[TIMESTAMP_FIELD] = ts
    return row


def item_features(fields: dict[str, str]) -> dict[str, Any]:
    counts, ts, first = _counts(fields)
    now_h = ts // HOUR_MS
    row: dict[str, Any] = {}
    for kind, name in (("imp", "impressions"), ("clk", "clicks"), ("lik", "likes")):
        for win, hours in (("24h", 24), ("7d", WEEK_H)):
            row[f"{name}_{win}"] = _window(counts.get(kind, {}), now_h, hours)
    row["ctr_7d"] = row["clicks_7d"] / row["impressions_7d"] if row["impressions_7d"] else 0.0
    engaged = defaultdict(int)
    for kind in ("clk", "lik"):
        for h, c in counts.get(kind, {}).items():
            engaged[h] += c
    row["popularity"] = sum(c * math.pow(0.5, (now_h - h) / POPULARITY_HALF_LIFE_H) for h, c in engaged.items()
                            if h > now_h - WEEK_H)
    row["age_s"] = max(0.0, (ts - first) / 1000)
    row[TIMESTAMP_FIELD] = ts
    return row


def _stale_fields(fields: dict[str, str]) -> list[str]:
    _, ts, _ = _counts(fields)
    now_h = ts // HOUR_MS
    return [f for f in fields if ":" in f and int(f.partition(":")[2]) <= now_h - WEEK_H]


class FeatureWriterHandler(RedisTransactionalHandler):
    """Counters + outbox in Redis; publication to Feast (online per batch, offline periodically).

    Args:
        client: Redis for counters and outbox (decode_responses=True).
        repo: a features.feast_repo.FeatureRepo, or None to skip Feast (counters and fast item
            blobs only; used by benchmarks that measure Feast separately).
        item_blobs: the fast item-feature reader's writer (RedisItemFeatures), or None.
        offline_flush_s: how often dirty entities are appended to the offline store.
        online_publish_ms: how often dirty entities are pushed online; entities changed several
            times in between are pushed once (Feast's push costs per row, not per event).
        publish_backoff: the next publication waits at least this many times as long as the
            last one took (0 = every online_publish_ms whatever it costs).
    """

    name = "feature-writer"

    def __init__(self, client: redis.Redis, prefix: str = "rs", repo=None, item_blobs: RedisItemFeatures | None = None,
                 offline_flush_s: float = 10.0, online_publish_ms: float = 100.0, publish_backoff: float = 1.0,
                 freshness_samples: int = 200_000):
        super().__init__(client, prefix)
        self.online_publish_ms = online_publish_ms
        self._last_online = 0.0
        self._last_publish_s = 0.0
        self.publish_backoff = publish_backoff
        # Kafka timestamps (ms) of applied events not yet published online: freshness is
        # measured when their features become readable, not when the counters moved.
        self._unpublished_ts: list[int] = []
        self.freshness_ms: deque[float] = deque(maxlen=freshness_samples)
        self.repo = repo
        self.item_blobs = item_blobs
        self.offline_flush_s = offline_flush_s
        self._apply_script = client.register_script(_APPLY_SCRIPT)
        self._agg_script = client.register_script(_AGG_SCRIPT)
        self._clean_script = client.register_script(_CLEAN_SCRIPT)
        self._last_offline = time.monotonic()

    # keys
    def k_user(self, u: str) -> str:
        return f"{self.prefix}:fw:u:{u}"

    def k_item(self, i: str) -> str:
        return f"{self.prefix}:fw:i:{i}"

    def k_genres(self, u: str) -> str:
        return f"{self.prefix}:fw:ug:{u}"

    def k_dirty(self, target: str, entity: str) -> str:
        return f"{self.prefix}:fw:dirty:{target}:{entity}"

    # step 1: counters, inside the offsets transaction
    def write(self, pipe, events: list[SourcedEvent]) -> None:
        incr: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        span: dict[str, list[int]] = {}
        genres: dict[str, list[str]] = defaultdict(list)
        users, items = set(), set()
        for se in events:
            e = se.event
            h = e.ts // HOUR_MS
            for kind in _kinds(e):
                incr[self.k_user(e.user_id)][f"{kind}:{h}"] += 1
                incr[self.k_item(e.item_id)][f"{kind}:{h}"] += 1
            for key in (self.k_user(e.user_id), self.k_item(e.item_id)):
                lo_hi = span.setdefault(key, [e.ts, e.ts])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], e.ts), max(lo_hi[1], e.ts)
            genre = (e.context or {}).get("genre") or (e.context or {}).get("category")
            if genre and e.type is not EventType.impression:
                genres[e.user_id].append(genre)
            users.add(e.user_id)
            items.add(e.item_id)
        batch = {
            "incr": [[key, f, n] for key, fields in incr.items() for f, n in fields.items()],
            "span": [[key, hi, lo] for key, (lo, hi) in span.items()],
            "genres": [[self.k_genres(u), gs] for u, gs in genres.items()],
            "dirty": [[self.k_dirty(t, ent), x] for t in ("online", "offline") for ent, ids in (("u", users), ("i", items))
                      for x in ids],
            "trim": 4 * RECENT_GENRES,
        }
        self._apply_script(keys=[], args=[json.dumps(batch)], client=pipe)

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        n = super().apply(topic, events, next_offsets)
        self._unpublished_ts.extend(se.kafka_ts_ms for se in events)
        self.tick()
        return n

    def tick(self) -> None:
        """Publish when due; the processor calls this on every poll, idle or not."""
        now = time.monotonic()
        # Under a backlog, publishing after every batch would spend most of the time pushing the
        # same hot entities again; waiting at least as long as the last publication took caps
        # publication at about half the time (publish_backoff=1) and lets changes coalesce. At a
        # steady rate the publications are short and the interval stays at online_publish_ms.
        if now - self._last_online >= max(self.online_publish_ms / 1000, self.publish_backoff * self._last_publish_s):
            t0 = time.perf_counter()
            while self.publish("online"):
                pass
            self._last_publish_s = time.perf_counter() - t0
            self._last_online = time.monotonic()
            done_ms = time.time() * 1000
            hist = m.FRESHNESS.labels(self.name)
            for ts in self._unpublished_ts:
                self.freshness_ms.append(done_ms - ts)
                hist.observe(max(0.0, done_ms - ts) / 1000)
            self._unpublished_ts.clear()
        if now - self._last_offline >= self.offline_flush_s:
            self.publish("offline")

    # step 2: publication from the outbox
    def compute(self, users: list[str], items: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Current feature rows for users and items (one Redis call), pruning stale buckets."""
        nu, ni = len(users), len(items)
        keys = [self.k_user(u) for u in users] + [self.k_item(i) for i in items] + [self.k_genres(u) for u in users]
        raw = self._agg_script(keys=keys, args=[nu + ni, 4 * RECENT_GENRES, POPULARITY_HALF_LIFE_H]) if keys else []
        agg = np.array([r[:11] for r in raw[: nu + ni]], dtype=np.int64).reshape(-1, 11)  # (U+I, 11)
        pop = np.array([float(r[11]) for r in raw[nu: nu + ni]], dtype=np.float64)  # (I,)
        ts, first = agg[:, 0], agg[:, 1]
        imp, clk, lik = agg[:, 2:5], agg[:, 5:8], agg[:, 8:11]  # (U+I, 3): 1h, 24h, 7d

        def ratio(a, b):
            return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

        u = slice(0, nu)
        udf = pd.DataFrame({"user_id": users, TIMESTAMP_FIELD: ts[u]})
        for name, arr in (("impressions", imp), ("clicks", clk), ("likes", lik)):
            for k, win in enumerate(("1h", "24h", "7d")):
                udf[f"{name}_{win}"] = arr[u, k]
        udf["ctr_24h"] = ratio(clk[u, 1], imp[u, 1])
        udf["ctr_7d"] = ratio(clk[u, 2], imp[u, 2])
        udf["recent_genres"] = ["|".join(list(dict.fromkeys(g))[:RECENT_GENRES]) for g in raw[nu + ni:]]
        it = slice(nu, nu + ni)
        idf = pd.DataFrame({"item_id": items, TIMESTAMP_FIELD: ts[it]})
        for name, arr in (("impressions", imp), ("clicks", clk), ("likes", lik)):
            for k, win in ((1, "24h"), (2, "7d")):
                idf[f"{name}_{win}"] = arr[it, k]
        idf["ctr_7d"] = ratio(clk[it, 2], imp[it, 2])
        idf["popularity"] = pop
        idf["age_s"] = np.maximum(0, ts[it] - first[it]) / 1000
        udf = udf[["user_id", TIMESTAMP_FIELD, *USER_FEATURES]]
        idf = idf[["item_id", TIMESTAMP_FIELD, *ITEM_FEATURES]]
        for df in (udf, idf):
            df[TIMESTAMP_FIELD] = pd.to_datetime(df[TIMESTAMP_FIELD], unit="ms", utc=True)
        return udf, idf

    def publish(self, target: str, max_entities: int = 20_000) -> int:
        """Push dirty entities of `target` ("online" or "offline") and clear them from the outbox."""
        ku, ki = self.k_dirty(target, "u"), self.k_dirty(target, "i")
        # The outbox is normally one batch's entities; after a long outage it is read in chunks.
        dirty_u = self.r.hrandfield(ku, max_entities, withvalues=True) or []
        dirty_i = self.r.hrandfield(ki, max_entities, withvalues=True) or []
        users, items = dirty_u[0::2], dirty_i[0::2]
        if not users and not items:
            return 0
        t0 = time.perf_counter()
        udf, idf = self.compute(users, items)
        if target == "online":
            if self.item_blobs is not None and len(idf):
                self.item_blobs.write(idf)
            if self.repo is not None:
                if len(udf):
                    self.repo.push_user_features(udf, offline=False)
                if len(idf):
                    self.repo.push_item_features(idf, offline=False)
        else:
            if self.repo is not None:
                self._push_offline(udf, idf)
            self._last_offline = time.monotonic()
        if dirty_u:
            self._clean_script(keys=[ku], args=dirty_u)
        if dirty_i:
            self._clean_script(keys=[ki], args=dirty_i)
        PUBLISH_LATENCY.labels(target).observe(time.perf_counter() - t0)
        return len(users) + len(items)

    def _push_offline(self, udf: pd.DataFrame, idf: pd.DataFrame) -> None:
        # Offline only: the online store already has these values from the per-interval push.
        if len(udf):
            self.repo.push_user_features(udf, online=False)
        if len(idf):
            self.repo.push_item_features(idf, online=False)

    def flush_all(self) -> None:
        """Publish everything still dirty (start-up after a crash, clean shutdown)."""
        for target in ("online", "offline"):
            while self.publish(target):
                pass

    recover = flush_all
    drain = flush_all

