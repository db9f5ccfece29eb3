"""feature-publisher: the outbox of the feature-writer, published to Feast and the item blobs.

Step 2 of the feature-writer's exactly-once scheme (see pipelines/stream/feature_writer.py): read
the dirty entities, compute their absolute feature values from the counters (server-side, one
Redis call), push them to the Feast online store and the fast item blobs, then remove them from
the outbox unless they changed meanwhile. The offline store is written every `offline_flush_s`.

Publication runs back to back while there is work, waiting at least `online_publish_ms` between
publications: a push costs per row, so the changes that arrive during one publication coalesce
into the next instead of being pushed per batch, and the latency stays about two publications.

Offline history (`offline_history=True`, for backfilling a dataset such as MovieLens-100k that is
streamed in bulk to train on): by default the offline store gets, every `offline_flush_s`, only the
state of each entity at that moment, so an entity streamed in a burst gets one or two offline rows
and a point-in-time join sees little of its history. With offline history the writer applies each
batch in segments in which no user or item has two distinct event times (its counters and offsets
still commit atomically, per segment) and records every touched entity's state after each segment
here; every `offline_flush_s` those rows go to the offline store. So the offline store holds the
entity's features after every distinct event time, and a join at t - 1 ms returns exactly the
features of all its events before t (for a user always: its events are in one partition, in order;
for an item when its events arrive in time order, e.g. one partition). Costs: one Redis
transaction and one aggregation call per segment (ML-100k: 41,884 segments for 100,000 events),
a buffered row per entity and distinct event time, and memory for the last row of every entity.
Rows at one (entity, event time) are de-duplicated (the last wins), and each entity's latest row is
held back until a later event time supersedes it or the publisher drains, so the offline store
never has two different rows at the same (entity, event time), which Feast would join arbitrarily.
A crash loses the buffered rows (the join then sees older rows: staler, never later); the offline
outbox is kept until the drain, so the restarted run still writes every entity's latest state.
Needs the publisher inline in the writer (`--publish inline`).

Freshness (Kafka record timestamp -> readable online) is measured here: the writer leaves a
sample of applied events' timestamps in a list; everything in that list before a publication
read the outbox is readable once the publication completes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque

import numpy as np
import pandas as pd
import redis

from features.item_features import RedisItemFeatures
from features.repo.definitions import ITEM_FEATURES, TIMESTAMP_FIELD, USER_FEATURES
from pipelines.stream import metrics as m
from pipelines.stream.base import freeze_heap_for_streaming
from features.keys import KeyLayout
from pipelines.stream.feature_writer import HOUR_MS, POPULARITY_HALF_LIFE_H, RECENT_GENRES, FeatureKeys, decode_marks

log = logging.getLogger(__name__)

PUBLISH_LATENCY = m.Histogram("recstream_feature_publish_seconds", "feature publication latency (Feast online push)",
                              ["target"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# Aggregate many counter hashes server-side in one call: per hash, the window sums of every kind
# (1h, 24h, 7d), the decayed engagement and the latest/first event times, pruning buckets older
# than 7d. Shipping nine numbers instead of every bucket keeps a Python publisher fast. The tests
# compare what it publishes with an oracle over the raw events (tests/feature_oracle.py).
# KEYS: hashes then genre lists; ARGV: n_hashes, trim, half_life_h, then optionally per hash the
# hour its windows end at ('' or none: its own latest event's; an item's shards end at the latest
# over all shards, so that their sums add up).
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
    local forced = ARGV[3 + i]
    if forced and forced ~= '' then now_h = tonumber(forced) end
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

# The latest event time of each item shard ('' for none) in one call per slot: a cluster client's
# pipeline of HGETs costs about 60 us a command in Python, this a few us a key.
_SHARD_TS_SCRIPT = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], 'ts') or '' end
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



class FeaturePublisher:
    """Publishes the feature-writer's outbox.

    Args:
        client: the writer's Redis (decode_responses=True).
        repo: a features.feast_repo.FeatureRepo, or None to skip Feast (item blobs only; used by
            tests and benchmarks that measure Feast separately).
        item_blobs: the fast item-feature reader's writer (RedisItemFeatures), or None.
        online_publish_ms: least time between the starts of two online publications.
        offline_flush_s: how often dirty entities are appended to the offline store.
        freshness_samples: how many recent freshness values `freshness_ms` keeps (for benchmarks).
        offline_history: write an offline row per entity and distinct event time (backfills; see
            the module docstring) instead of each dirty entity's state every offline_flush_s.
    """

    name = "feature-writer"  # metrics label: freshness is the feature-writer pipeline's

    def __init__(self, client: redis.Redis, prefix: str | KeyLayout = "rs", repo=None,
                 item_blobs: RedisItemFeatures | None = None,
                 online_publish_ms: float = 50.0, offline_flush_s: float = 10.0, freshness_samples: int = 200_000,
                 offline_history: bool = False):
        if online_publish_ms < 0 or offline_flush_s <= 0:
            raise ValueError(f"online_publish_ms must be >= 0 and offline_flush_s > 0, got {online_publish_ms}, {offline_flush_s}")
        self.r = client
        self.layout = prefix if isinstance(prefix, KeyLayout) else KeyLayout(prefix)
        self.keys = FeatureKeys(self.layout)
        self.repo = repo
        self.item_blobs = item_blobs
        self.online_publish_ms = online_publish_ms
        self.offline_flush_s = offline_flush_s
        self.freshness_ms: deque[float] = deque(maxlen=freshness_samples)
        self._agg_script = client.register_script(_AGG_SCRIPT)
        self._clean_script = client.register_script(_CLEAN_SCRIPT)
        self._shard_ts_script = client.register_script(_SHARD_TS_SCRIPT)
        self._last_online = 0.0
        self._last_offline = time.monotonic()
        self.offline_history = offline_history
        self._hist_lock = threading.Lock()
        self._hist_chunks: list[tuple[list[str], list[str], list]] = []  # (users, items, raw aggregation rows)
        self._hist_held: tuple[pd.DataFrame, pd.DataFrame] | None = None  # each entity's latest row, not yet written
        self._hist_covered: tuple[set[str], set[str]] = (set(), set())  # entities whose every state was recorded

    def tick(self) -> int:
        """Publish what is due. Returns entities published online."""
        n = 0
        now = time.monotonic()
        if now - self._last_online >= self.online_publish_ms / 1000:
            self._last_online = now
            n, _ = self.publish_online()
        if now - self._last_offline >= self.offline_flush_s:
            if self.offline_history:
                self.flush_history(final=False)
            else:
                self.publish("offline")
        return n

    def publish_online(self) -> tuple[int, bool]:
        """Publish the dirty entities online, then record the freshness of what became visible.

        Returns:
            (entities published, whether the outbox was published whole).
        """
        mark_keys = [self.keys.fresh_marks_at(t) for t in self.layout.tags()]
        marks = [self.r.llen(k) for k in mark_keys]  # applied before the outbox is read below
        n, complete = self.publish("online")
        if any(marks) and complete:  # else the rest of the outbox goes first, on the next call
            done_ms = time.time() * 1000
            popped = [mark for k, n_marks in zip(mark_keys, marks) if n_marks for mark in self.r.lpop(k, n_marks) or []]
            ts = np.fromiter((t for mark in popped for t in decode_marks(mark)), np.float64)
            ages = np.maximum(0.0, done_ms - ts)
            self.freshness_ms.extend(ages.tolist())
            m.observe_freshness(self.name, ages)
        return n, complete

    # publication from the outbox
    def _aggregate(self, users: list[str], items: list[str]) -> list:
        """Per user then item [ts, first, 9 window counts, popularity], then per user its recent
        genres; stale buckets are pruned on the way. One Redis call with the single layout; with the
        partitioned one, a call per tag for the users and, for the items, one trip for the latest
        event time of every shard and then a call per tag summing its shards up to that hour."""
        k = self.keys
        trim_half = [4 * RECENT_GENRES, POPULARITY_HALF_LIFE_H]
        if not self.layout.partitioned:
            keys = [k.user(u) for u in users] + [k.item(i) for i in items] + [k.genres(u) for u in users]
            return self._agg_script(keys=keys, args=[len(users) + len(items), *trim_half]) if keys else []
        user_rows: list = [None] * len(users)
        genre_rows: list = [None] * len(users)
        by_tag: dict[str, list[int]] = defaultdict(list)
        for j, u in enumerate(users):
            by_tag[self.layout.user_tag(u)].append(j)
        for tag, idx in by_tag.items():
            raw = self._agg_script(keys=[k.user(users[j], tag) for j in idx] + [k.genres(users[j], tag) for j in idx],
                                   args=[len(idx), *trim_half])
            for n, j in enumerate(idx):
                user_rows[j], genre_rows[j] = raw[n], raw[len(idx) + n]
        return user_rows + self._aggregate_item_shards(items, trim_half) + genre_rows

    def _aggregate_item_shards(self, items: list[str], trim_half: list) -> list:
        """Item rows summed over the per-partition shards: exact counts (each shard counts its own
        partition's events once) in windows ending at the item's latest event over all shards.
        Two calls per tag: the shards' latest event times, then their sums up to that hour."""
        if not items:
            return []
        k, tags = self.keys, self.layout.tags()
        ts_raw = [ts or None for t in tags for ts in self._shard_ts_script(keys=[k.item(i, t) for i in items])]
        n = len(items)
        latest = [max(int(ts_raw[ti * n + j] or 0) for ti in range(len(tags))) for j in range(n)]
        counts = np.zeros((n, 9), dtype=np.int64)  # (I, 9)
        pop = np.zeros(n, dtype=np.float64)
        first: list[int | None] = [None] * n
        for ti, t in enumerate(tags):
            present = [j for j in range(n) if ts_raw[ti * n + j] is not None]
            if not present:
                continue
            raw = self._agg_script(keys=[k.item(items[j], t) for j in present],
                                   args=[len(present), *trim_half, *(str(latest[j] // HOUR_MS) for j in present)])
            for row, j in zip(raw, present):
                counts[j] += np.asarray(row[2:11], dtype=np.int64)
                pop[j] += float(row[11])
                first[j] = int(row[1]) if first[j] is None else min(first[j], int(row[1]))
        return [[latest[j], latest[j] if first[j] is None else first[j], *counts[j].tolist(), repr(float(pop[j]))]
                for j in range(n)]

    def compute(self, users: list[str], items: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Current feature rows for users and items (one Redis call), pruning stale buckets."""
        raw = self._aggregate(users, items)
        nu, ni = len(users), len(items)
        return self._frames(users, items, raw[: nu + ni], raw[nu + ni :])

    @staticmethod
    def _frames(users: list[str], items: list[str], stats: list, genres: list) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Feature frames from aggregation rows (`stats`: users then items) and users' genre lists."""
        nu, ni = len(users), len(items)
        agg = np.array([r[:11] for r in stats], dtype=np.int64).reshape(-1, 11)  # (U+I, 11)
        pop = np.array([float(r[11]) for r in stats[nu: nu + ni]], dtype=np.float64)  # (I,)
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
        udf["recent_genres"] = ["|".join(list(dict.fromkeys(g))[:RECENT_GENRES]) for g in genres]
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

    # offline history (backfills)
    def record_history(self, users: list[str], items: list[str]) -> None:
        """Record the current state of these entities as offline rows (the writer calls this after
        each segment it committed; see the module docstring). Never raises: an entity whose state
        could not be recorded is written from the outbox at the drain instead."""
        users, items = list(dict.fromkeys(users)), list(dict.fromkeys(items))
        try:
            raw = self._aggregate(users, items)
        except Exception as e:  # the counters are committed; only this history row is lost
            log.warning("feature-publisher: offline history row not recorded (%s)", e)
            with self._hist_lock:
                self._hist_covered[0].difference_update(users)
                self._hist_covered[1].difference_update(items)
            return
        with self._hist_lock:
            self._hist_chunks.append((users, items, raw))
            self._hist_covered[0].update(users)
            self._hist_covered[1].update(items)

    def flush_history(self, final: bool) -> int:
        """Write the recorded rows to the offline store; rows that a later write could still tie
        with (each entity's latest) are held back unless `final`. Returns rows written."""
        with self._hist_lock:
            chunks, held = self._hist_chunks, self._hist_held
            self._hist_chunks, self._hist_held = [], None
        users = [u for us, _, _ in chunks for u in us]
        items = [i for _, its, _ in chunks for i in its]
        stats = [r for us, its, raw in chunks for r in raw[: len(us)]] + \
                [r for us, its, raw in chunks for r in raw[len(us): len(us) + len(its)]]
        genres = [g for us, its, raw in chunks for g in raw[len(us) + len(its):]]
        udf, idf = self._frames(users, items, stats, genres) if chunks else (None, None)
        out: list[pd.DataFrame | None] = []  # to write now, per users / items
        keep: list[pd.DataFrame | None] = []  # held back: each entity's latest row
        for k, (key, new) in enumerate((("user_id", udf), ("item_id", idf))):
            parts = [df for df in ((held[k] if held else None), new) if df is not None and len(df)]
            df = (pd.concat(parts, ignore_index=True).drop_duplicates([key, TIMESTAMP_FIELD], keep="last")
                  .reset_index(drop=True) if parts else None)
            if df is None or final:
                out.append(df), keep.append(None)
                continue
            superseded = df.duplicated(key, keep="last")  # every row but each entity's last
            out.append(df[superseded].reset_index(drop=True)), keep.append(df[~superseded].reset_index(drop=True))
        self._last_offline = time.monotonic()
        try:
            if self.repo is not None:
                self._push_offline(*(df if df is not None else pd.DataFrame() for df in out))
        except Exception:
            with self._hist_lock:  # nothing written: everything goes back, before rows recorded since
                self._hist_held = tuple(
                    pd.concat([d for d in (o, h) if d is not None], ignore_index=True) if (o is not None or h is not None)
                    else None for o, h in zip(out, keep))
            raise
        with self._hist_lock:
            self._hist_held = None if final else tuple(keep)
        return sum(len(df) for df in out if df is not None)

    def publish(self, target: str, max_entities: int = 20_000,
                covered: tuple[set[str], set[str]] | None = None) -> tuple[int, bool]:
        """Push dirty entities of `target` ("online" or "offline") and clear them from the outbox.

        Args:
            covered: (users, items) already written with their latest state (offline history):
                cleared from the outbox without another push.
        Returns:
            (entities published, whether that was the whole outbox as read).
        """
        # The outbox is normally one batch's entities; after a long outage it is read in chunks.
        # One per tag with the partitioned layout: an entity dirty in several is published once.
        outbox: list[tuple[str, list]] = []  # (outbox key, [field, change counter, ...] as read)
        for t in self.layout.tags():
            for ent in ("u", "i"):
                key = self.keys.dirty(target, ent, t)
                outbox.append((key, self.r.hrandfield(key, max_entities, withvalues=True) or []))
        users = list(dict.fromkeys(f for key, d in outbox if key.endswith(":u") for f in d[0::2]))
        items = list(dict.fromkeys(f for key, d in outbox if key.endswith(":i") for f in d[0::2]))
        if not users and not items:
            return 0, True
        t0 = time.perf_counter()
        if covered is not None:
            udf, idf = self.compute([u for u in users if u not in covered[0]], [i for i in items if i not in covered[1]])
        else:
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
        for key, d in outbox:
            if d:
                self._clean_script(keys=[key], args=d)
        PUBLISH_LATENCY.labels(target).observe(time.perf_counter() - t0)
        return len(users) + len(items), all(len(d) // 2 < max_entities for _, d in outbox)

    def _push_offline(self, udf: pd.DataFrame, idf: pd.DataFrame) -> None:
        # Offline only: the online store already has these values from the per-interval push.
        if len(udf):
            self.repo.push_user_features(udf, online=False)
        if len(idf):
            self.repo.push_item_features(idf, online=False)

    def flush_all(self) -> None:
        """Publish everything still dirty (start-up after a crash, clean shutdown)."""
        while not self.publish_online()[1]:
            pass
        covered = None
        if self.offline_history:
            self.flush_history(final=True)
            with self._hist_lock:
                covered = (set(self._hist_covered[0]), set(self._hist_covered[1]))
        while not self.publish("offline", covered=covered)[1]:
            pass

    def run(self, stop: threading.Event, max_idle_s: float | None = None, retry_backoff_ms: int = 500) -> None:
        """Publish until `stop` is set (or the outbox stayed empty for max_idle_s), then drain."""
        freeze_heap_for_streaming()
        self.flush_all()  # whatever a crashed run left
        idle_since = time.monotonic()
        while not stop.is_set():
            try:
                n = self.tick()
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as e:
                # The outbox keeps the work; publish it when Redis is back.
                log.warning("feature-publisher: %s; retrying in %d ms", e, retry_backoff_ms)
                stop.wait(retry_backoff_ms / 1000)
                continue
            now = time.monotonic()
            if n:
                idle_since = now
            elif max_idle_s is not None and now - idle_since > max_idle_s:
                break
            stop.wait(max(0.0, self._last_online + self.online_publish_ms / 1000 - now) or 0.005)
        self.flush_all()
