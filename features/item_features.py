"""Fast item-feature read path for serving.

Feast's `get_online_features` costs milliseconds per call for 500 entities (Python-side entity
key serialisation, protobuf decoding, DataFrame/dict building). Serving needs a fixed numeric
vector per candidate, so the feature writer also stores one packed blob per item:

    {prefix}:if:{item_id} = header `<IQ` (schema crc32, event time ms) + float32[F] in ITEM_FEATURES order

and the reader fetches N items with one MGET and decodes them with numpy. An optional in-replica
TTL cache skips Redis for hot items (the candidate sets of consecutive requests overlap a lot).
Feast stays the source of truth and the offline/training path; this is a read-optimised copy.
"""

from __future__ import annotations

import logging
import struct
import tempfile
import time
import uuid
import zlib
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import redis

from features.errors import ItemFeatureSchemaMismatch
from features.repo.definitions import ITEM_FEATURES, TIMESTAMP_FIELD

log = logging.getLogger(__name__)

ITEM_FEATURE_NAMES: tuple[str, ...] = tuple(ITEM_FEATURES)
_HEADER = struct.Struct("<IQ")  # schema crc32, event time (epoch ms)


def schema_id(names: Sequence[str]) -> int:
    """crc32 of the ordered feature names: a reader refuses blobs written with another layout."""
    return zlib.crc32("\x1f".join(names).encode())


class ItemFeatureReader(Protocol):
    names: tuple[str, ...]

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        """Args: item_ids (N,). Returns: (N, F) float32 in `names` order; NaN rows for unknown items."""
        ...


def pack_item_rows(df: pd.DataFrame, names: Sequence[str] = ITEM_FEATURE_NAMES) -> dict[str, bytes]:
    """Rows (item_id, event_timestamp, *names) -> {item_id: blob}; the latest row per item wins."""
    sid = schema_id(names)
    ts_ms = (pd.to_datetime(df[TIMESTAMP_FIELD], utc=True).astype("int64") // 1_000_000).to_numpy()
    values = df[list(names)].to_numpy(dtype=np.float32, na_value=np.nan)  # (n, F)
    order = np.argsort(ts_ms, kind="stable")
    out: dict[str, bytes] = {}
    ids = df["item_id"].astype(str).to_numpy()
    for i in order:  # later rows overwrite earlier ones
        out[ids[i]] = _HEADER.pack(sid, int(ts_ms[i])) + values[i].tobytes()
    return out


class RedisItemFeatures:
    """Writer and fast reader of packed item-feature blobs.

    Args:
        client: redis-py client (decode_responses=False).
        prefix: key prefix (Settings.redis_prefix).
        names: feature layout; defaults to the Feast item view's features.
        cache_ttl_s: in-replica cache lifetime; 0 disables the cache.
        cache_max_items: cache bound; the cache is cleared when it is exceeded (cheap, rare).
        key_ttl_s: Redis expiry of the blobs (None: none), e.g. the Feast view's TTL.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "rs",
        names: Sequence[str] = ITEM_FEATURE_NAMES,
        cache_ttl_s: float = 0.0,
        cache_max_items: int = 200_000,
        key_ttl_s: int | None = None,
    ):
        self.r = client
        self.prefix = prefix
        self.names = tuple(names)
        self._sid = schema_id(self.names)
        self._row_bytes = _HEADER.size + 4 * len(self.names)
        self.cache_ttl_s = cache_ttl_s
        self.cache_max_items = cache_max_items
        self.key_ttl_s = key_ttl_s
        self._cache: dict[str, tuple[float, np.ndarray]] = {}

    @classmethod
    def from_url(cls, url: str, prefix: str = "rs", **kwargs) -> "RedisItemFeatures":
        return cls(redis.Redis.from_url(url, decode_responses=False), prefix=prefix, **kwargs)

    def _key(self, item_id: str) -> str:
        return f"{self.prefix}:if:{item_id}"

    def write(self, df: pd.DataFrame) -> int:
        """Store the latest row per item (columns item_id, event_timestamp, *names); one pipeline.

        Returns:
            number of items written.
        """
        blobs = pack_item_rows(df, self.names)
        pipe = self.r.pipeline(transaction=False)
        if self.key_ttl_s:
            for item_id, blob in blobs.items():
                pipe.set(self._key(item_id), blob, ex=self.key_ttl_s)
        else:
            pipe.mset({self._key(i): b for i, b in blobs.items()})
        pipe.execute()
        return len(blobs)

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        """Args: item_ids (N,). Returns: (N, F) float32; NaN rows for items never written.

        One MGET for all cache misses (zero round trips when all are cached).
        """
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        now = time.monotonic()
        miss_idx: list[int] = []
        if self.cache_ttl_s > 0:
            for i, item_id in enumerate(item_ids):
                hit = self._cache.get(item_id)
                if hit is not None and hit[0] > now:
                    out[i] = hit[1]
                else:
                    miss_idx.append(i)
        else:
            miss_idx = list(range(len(item_ids)))
        if not miss_idx:
            return out
        blobs = self.r.mget([self._key(item_ids[i]) for i in miss_idx])
        present = [(i, b) for i, b in zip(miss_idx, blobs) if b is not None]
        if present:
            buf = b"".join(b for _, b in present)
            if len(buf) != self._row_bytes * len(present):
                bad = next(item_ids[i] for i, b in present if len(b) != self._row_bytes)
                raise ItemFeatureSchemaMismatch(bad, f"{len(buf)} bytes", f"{self._row_bytes} bytes per item")
            rows = np.frombuffer(buf, dtype=np.uint8).reshape(len(present), self._row_bytes)
            sids = rows[:, :4].copy().view("<u4").ravel()
            if (sids != self._sid).any():
                bad = item_ids[present[int(np.flatnonzero(sids != self._sid)[0])][0]]
                raise ItemFeatureSchemaMismatch(bad, str(int(sids[sids != self._sid][0])), str(self._sid))
            values = rows[:, _HEADER.size :].copy().view("<f4")  # (n, F)
            idx = np.fromiter((i for i, _ in present), dtype=np.int64, count=len(present))
            out[idx] = values
            if self.cache_ttl_s > 0:
                if len(self._cache) + len(present) > self.cache_max_items:
                    self._cache.clear()
                expiry = now + self.cache_ttl_s
                for k, i in enumerate(idx):
                    self._cache[item_ids[i]] = (expiry, values[k])
        return out

    def event_time_ms(self, item_ids: Sequence[str]) -> list[int | None]:
        """Event time of each stored row (for freshness metrics)."""
        return [
            None if b is None else _HEADER.unpack_from(b)[1]
            for b in self.r.mget([self._key(i) for i in item_ids])
        ]


class InMemoryItemFeatures:
    """Same read/write contract in a dict (unit tests)."""

    def __init__(self, names: Sequence[str] = ITEM_FEATURE_NAMES):
        self.names = tuple(names)
        self._rows: dict[str, np.ndarray] = {}

    def write(self, df: pd.DataFrame) -> int:
        blobs = pack_item_rows(df, self.names)
        for item_id, blob in blobs.items():
            self._rows[item_id] = np.frombuffer(blob[_HEADER.size :], dtype="<f4").copy()
        return len(blobs)

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        for i, item_id in enumerate(item_ids):
            row = self._rows.get(item_id)
            if row is not None:
                out[i] = row
        return out


def _p(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def bench_item_reads(
    n_items: int = 500,
    repeats: int = 50,
    redis_url: str | None = None,
    work_dir: str | None = None,
) -> Mapping[str, float]:
    """Time reading n_items candidates' features: Feast get_online_features vs the packed MGET path.

    Sets up a throwaway Feast project (Redis online store) and key prefix on `redis_url`
    (default Settings.redis_url), pushes n_items synthetic items to both, times `repeats` reads
    of all n_items after one warm-up each, then deletes what it wrote.

    Returns:
        feast_read_500_items_p50_ms / _p99_ms, fast_read_500_items_p50_ms / _p99_ms (no cache),
        fast_cached_read_500_items_p99_ms (TTL cache warm), speedup_p99 (feast p99 / fast p99).
        (The key names keep "500" whatever n_items is, so dashboards stay stable.)
    """
    from features.feast_repo import apply_repo
    from recstream.settings import get_settings

    redis_url = redis_url or get_settings().redis_url
    tag = uuid.uuid4().hex[:8]
    rng = np.random.default_rng(0)
    ids = [f"bench-item-{k}" for k in range(n_items)]
    df = pd.DataFrame({"item_id": ids, TIMESTAMP_FIELD: pd.Timestamp.now(tz="UTC")})
    for n, t in ITEM_FEATURES.items():
        df[n] = rng.integers(0, 1000, n_items) if str(t) == "Int64" else rng.random(n_items).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        repo = apply_repo(tmp, online="redis", redis_conn=redis_url, project=f"bench_{tag}")
        fast = RedisItemFeatures.from_url(redis_url, prefix=f"bench{tag}")
        cached = RedisItemFeatures(fast.r, prefix=f"bench{tag}", cache_ttl_s=60.0)
        try:
            repo.push_item_features(df, offline=False)
            fast.write(df)
            feast_s, fast_s, cached_s = [], [], []
            for timings, fn in (
                (feast_s, lambda: repo.online_item_features(ids)),
                (fast_s, lambda: fast.read(ids)),
                (cached_s, lambda: cached.read(ids)),
            ):
                fn()  # warm-up (registry cache, connections, cache fill)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    timings.append(time.perf_counter() - t0)
            got = fast.read(ids)
            want = repo.online_item_features(ids)[list(ITEM_FEATURES)].to_numpy(dtype=np.float32)
            if not np.allclose(got, want, equal_nan=True):
                raise AssertionError("fast item features differ from Feast's online values")
        finally:
            keys = list(fast.r.scan_iter(match=f"bench{tag}:if:*", count=1000))
            if keys:
                fast.r.delete(*keys)
            try:
                repo.store.teardown()
            except Exception as e:  # best effort: a failed teardown leaves only bench keys
                log.warning("bench teardown of Feast project bench_%s failed: %s", tag, e)
    res = {
        "feast_read_500_items_p50_ms": _p(feast_s, 50),
        "feast_read_500_items_p99_ms": _p(feast_s, 99),
        "fast_read_500_items_p50_ms": _p(fast_s, 50),
        "fast_read_500_items_p99_ms": _p(fast_s, 99),
        "fast_cached_read_500_items_p99_ms": _p(cached_s, 99),
        "n_items": float(n_items),
        "repeats": float(repeats),
    }
    res["speedup_p99"] = res["feast_read_500_items_p99_ms"] / res["fast_read_500_items_p99_ms"]
    return res
