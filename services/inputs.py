"""Request-time inputs, read from what the stream wrote.

    history        the user's recent behaviours      BSE sequence (bse-encoder), one LRANGE
    user features  rolling user features             Feast online store (feature-writer)
    SDIM tables    long-term interest, per version   BSE tables (bse-encoder), one GET
    item features  per candidate                     packed item blobs (feature-publisher), one MGET
    seen items     for filtering                     popularity processor's seen set, one SMISMEMBER

Every read is small and bounded; each source has its own deadline in the ingress
(services/pipeline.py), and a failing source gives a default with a reason instead of an error.
The interface is small so unit tests use `InMemoryInputs` and integration tests the Redis one.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import redis

from features.bse.redis_store import RedisBseStore
from features.bse.versions import DEFAULT_ITEM_BITS, TableVersion
from features.feast_online import OnlineRowReader
from features.item_features import ITEM_FEATURE_NAMES, RedisItemFeatures
from features.keys import KeyLayout, PopularityKeys
from models.sdim_hash import SdimConfig

log = logging.getLogger(__name__)


class InputSources(ABC):
    """Args of every method: one user (and candidates); each may raise on an outage (the caller
    turns that into a default and a reason)."""

    @abstractmethod
    def history(self, user_id: str, last_n: int) -> list[str]:
        """The user's last `last_n` behaviour item ids, oldest first ([] for a new user)."""

    @abstractmethod
    def user_features(self, user_id: str) -> dict[str, object] | None:
        """Raw user feature row (Feast names -> values), None when the store has none."""

    @abstractmethod
    def bse_tables(self, user_id: str, ranker_version: str, sdim: SdimConfig) -> np.ndarray | None:
        """(S, B, d) float32 bucket sums of the user for the ranker version; None when the BSE
        does not hold that version at all (then the ranker runs without long-term interest)."""

    @abstractmethod
    def item_features(self, item_ids: Sequence[str]) -> np.ndarray:
        """(N, len(ITEM_FEATURE_NAMES)) float32 raw item features; NaN rows for unknown items."""

    @abstractmethod
    def seen(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """(N,) bool: the user already interacted with the item."""


class RedisInputs(InputSources):
    """The real sources on one Redis (Feast's online store may be the same Redis).

    Args:
        client: redis-py client with short socket timeouts (ServeConfig.deadlines.redis_timeout_ms).
        prefix: Settings.redis_prefix.
        feast_repo: features.feast_repo.FeatureRepo, or None (user features off: defaults).
        item_cache_ttl_s: in-replica cache of item blobs.
        bse_version_check_s: how often a version the BSE did not hold is looked up again.
        layout: where the processors keep a user's keys (KeyLayout.from_settings); None: the
            single layout under `prefix`.
    """

    def __init__(self, client: redis.Redis, prefix: str, feast_repo=None, item_cache_ttl_s: float = 1.0,
                 bse_version_check_s: float = 5.0, layout: KeyLayout | None = None):
        self.r = client
        self.prefix = prefix
        self.keys = PopularityKeys(layout or KeyLayout(prefix))
        # the registry resolved once here, not per request (features/feast_online.py)
        self.user_rows = OnlineRowReader(feast_repo) if feast_repo is not None else None
        self.bse = RedisBseStore(client, prefix=prefix, layout=layout)
        self.items = RedisItemFeatures(client, prefix=prefix, cache_ttl_s=item_cache_ttl_s)
        self.bse_version_check_s = bse_version_check_s
        self._versions: dict[str, tuple[TableVersion, bool, float]] = {}  # ranker version -> (tv, held, checked at)

    def history(self, user_id: str, last_n: int) -> list[str]:
        return self.bse.sequence(user_id, last_n=last_n)

    def user_features(self, user_id: str) -> dict[str, object] | None:
        if self.user_rows is None:
            return None
        return self.user_rows.rows([user_id])[0]

    def _table_version(self, ranker_version: str, sdim: SdimConfig) -> tuple[TableVersion, bool]:
        now = time.monotonic()
        hit = self._versions.get(ranker_version)
        if hit is not None and (hit[1] or now - hit[2] < self.bse_version_check_s):
            return hit[0], hit[1]
        tv = hit[0] if hit else self.bse.register_lookup_version(ranker_version, sdim, DEFAULT_ITEM_BITS)
        held = self.bse.holds_version(tv)
        self._versions[ranker_version] = (tv, held, now)
        return tv, held

    def bse_tables(self, user_id: str, ranker_version: str, sdim: SdimConfig) -> np.ndarray | None:
        tv, held = self._table_version(ranker_version, sdim)
        if not held:
            return None
        return self.bse.tables([user_id], tv)[0]

    def item_features(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.items.read(list(item_ids))

    def seen(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        if not item_ids:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.r.smismember(self.keys.seen(user_id), list(item_ids)), dtype=bool)


class InMemoryInputs(InputSources):
    """Dict-backed sources for unit tests; `fail` names sources that raise ConnectionError."""

    def __init__(self, histories: dict[str, list[str]] | None = None, user_rows: dict[str, dict] | None = None,
                 tables: dict[tuple[str, str], np.ndarray] | None = None, item_rows: dict[str, np.ndarray] | None = None,
                 held_versions: set[str] | None = None):
        self.histories = histories or {}
        self.user_rows = user_rows or {}
        self.tables = tables or {}
        self.item_rows = item_rows or {}
        self.held_versions = held_versions
        self.fail: set[str] = set()
        self.delay_s: dict[str, float] = {}

    def _maybe_fail(self, source: str) -> None:
        if source in self.delay_s:
            time.sleep(self.delay_s[source])
        if source in self.fail:
            raise ConnectionError(f"{source} down (test)")

    def history(self, user_id: str, last_n: int) -> list[str]:
        self._maybe_fail("history")
        return list(self.histories.get(user_id, []))[-last_n:]

    def user_features(self, user_id: str) -> dict[str, object] | None:
        self._maybe_fail("user_features")
        return self.user_rows.get(user_id)

    def bse_tables(self, user_id: str, ranker_version: str, sdim: SdimConfig) -> np.ndarray | None:
        self._maybe_fail("bse")
        if self.held_versions is not None and ranker_version not in self.held_versions:
            return None
        shape = (sdim.n_signatures, sdim.n_buckets, sdim.dim)
        return self.tables.get((user_id, ranker_version), np.zeros(shape, dtype=np.float32))

    def item_features(self, item_ids: Sequence[str]) -> np.ndarray:
        self._maybe_fail("item_features")
        out = np.full((len(item_ids), len(ITEM_FEATURE_NAMES)), np.nan, dtype=np.float32)
        for i, item in enumerate(item_ids):
            if item in self.item_rows:
                out[i] = self.item_rows[item]
        return out

    def seen(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        self._maybe_fail("seen")
        hist = set(self.histories.get(user_id, []))
        return np.fromiter((i in hist for i in item_ids), dtype=bool, count=len(item_ids))


class PopularItems:
    """The most popular items (the popularity processor's `<prefix>:pop`, summed over its
    per-partition shards with the partitioned layout), cached in the replica: the retrieval
    fallback and the popular items merged into the candidates.

    Args:
        pool_size: items cached; refresh_s: how often the cache is refreshed.
        layout: KeyLayout.from_settings; None: the single layout under `prefix`.
    """

    def __init__(self, client: redis.Redis, prefix: str = "rs", pool_size: int = 1000, refresh_s: float = 2.0,
                 layout: KeyLayout | None = None):
        self.r = client
        self.prefix = prefix
        self.keys = PopularityKeys(layout or KeyLayout(prefix))
        self.pool_size = pool_size
        self.refresh_s = refresh_s
        self._pool: list[tuple[str, float]] = []
        self._pool_at = 0.0
        self._lock = threading.Lock()

    def popular(self, n: int) -> list[tuple[str, float]]:
        """The n most popular (item, score); the last pool when Redis is down (stale popularity beats
        none), ConnectionError when there never was one."""
        if time.monotonic() - self._pool_at >= self.refresh_s or not self._pool:
            with self._lock:
                try:
                    raw = top_of_shards(self.r, self.keys.popular_shards, self.pool_size)
                    self._pool = [(i.decode() if isinstance(i, bytes) else i, float(s)) for i, s in raw]
                    self._pool_at = time.monotonic()
                except redis.RedisError as e:
                    if not self._pool:
                        raise redis.ConnectionError(f"popular items unavailable and none cached: {e}") from e
                    log.warning("popular items: refresh failed (%s); serving the cached %d", e, len(self._pool))
        return self._pool[:n]


def top_of_shards(client: redis.Redis, shards: list[str], n: int) -> list[tuple[str | bytes, float]]:
    """The n members with the largest score summed over ZSET shards, exactly, best first.

    The threshold algorithm: read each shard's top m, sum every member seen over all shards
    (ZMSCORE); a member in no shard's top m scores at most the sum of the shards' m-th scores, so
    once the n-th best sum reaches that bound the answer is exact; else m doubles. One shard is
    one ZREVRANGE.
    """
    if len(shards) == 1:
        return client.zrevrange(shards[0], 0, n - 1, withscores=True)
    m = n
    while True:
        with client.pipeline(transaction=False) as pipe:
            for k in shards:
                pipe.zrevrange(k, 0, m - 1, withscores=True)
            tops = pipe.execute()
        seen = list(dict.fromkeys(member for top in tops for member, _ in top))
        if not seen:
            return []
        with client.pipeline(transaction=False) as pipe:
            for k in shards:
                pipe.zmscore(k, seen)
            scores = pipe.execute()
        sums = np.nansum(np.array([[np.nan if x is None else x for x in row] for row in scores], dtype=np.float64),
                         axis=0)  # (len(seen),)
        order = sorted(range(len(seen)), key=lambda i: -sums[i])[:n]
        bound = sum(top[-1][1] for top in tops if len(top) == m)  # a shard with fewer than m is exhausted
        if len(order) == n and sums[order[-1]] >= bound or all(len(top) < m for top in tops):
            return [(seen[i], float(sums[i])) for i in order]
        m *= 2
