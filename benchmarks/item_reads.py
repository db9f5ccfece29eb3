"""Item-feature read paths for the stream report: Feast's online read against the packed MGET
path of features/item_features.py (moved here from that module: benchmarks live in one package)."""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from typing import Mapping

import numpy as np
import pandas as pd

from features.item_features import RedisItemFeatures
from features.repo.definitions import ITEM_FEATURES, TIMESTAMP_FIELD

log = logging.getLogger(__name__)


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
