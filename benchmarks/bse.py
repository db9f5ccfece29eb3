"""BSE apply-path benchmark against a real Redis (the stream benchmark calls `bench_bse_apply`).

    from benchmarks.bse import bench_bse_apply
    bench_bse_apply("redis://127.0.0.1:16391/0", n_users=500, events=20_000, batch=2000)

Users start with full sequences (`prefill` behaviours each, max_seq_len by default), so every
measured event also evicts one: the steady state of a long-running bse-encoder. Item embeddings
are clustered (50 centres) and every user draws from a few of them, which makes bucket sums
large (the size-critical case); events are spread uniformly over the users.
"""

from __future__ import annotations

import statistics
import time
import uuid

import numpy as np
import redis

from features.bse.embeddings import ArrayItemEmbeddings
from features.bse.redis_store import RedisBseStore
from features.bse.store import DEFAULT_MAX_SEQ_LEN
from features.bse.types import Behaviour
from features.bse.versions import TableVersion
from models.sdim_hash import SdimConfig, SdimHasher


def clustered_embeddings(n_items: int, dim: int = 64, n_clusters: int = 50, seed: int = 0) -> tuple[ArrayItemEmbeddings, np.ndarray]:
    """Items around `n_clusters` centres (ids i0..). Returns (embeddings, (n_items,) cluster label)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)) * 0.3
    labels = rng.integers(0, n_clusters, n_items + 16)
    table = (centers[labels] + rng.standard_normal((n_items + 16, dim)) * 0.15).astype(np.float32)
    return ArrayItemEmbeddings([f"i{k}" for k in range(n_items)], table, 16), labels[:n_items]


def _user_items(rng: np.random.Generator, by_cluster: list[np.ndarray], tastes: np.ndarray, n: int) -> np.ndarray:
    """(n,) item indices drawn from the user's taste clusters."""
    pools = [by_cluster[c] for c in tastes]
    which = rng.integers(0, len(pools), n)
    return np.concatenate([p[rng.integers(0, len(p), int((which == k).sum()))] for k, p in enumerate(pools)])


def _prefill(store: RedisBseStore, users: list[str], seqs: list[list[str]]) -> None:
    """Write sequences directly (RPUSH), then build the tables with store.rebuild."""
    pipe = store.r.pipeline(transaction=False)
    for u, seq in zip(users, seqs):
        pipe.delete(store._k_seq(u))
        for k in range(0, len(seq), 20_000):
            pipe.rpush(store._k_seq(u), *seq[k : k + 20_000])
        pipe.set(store._k_n(u), len(seq))
        if len(pipe) > 50:
            pipe.execute()
    pipe.execute()


def bench_bse_apply(
    redis_url: str,
    n_users: int = 500,
    events: int = 20_000,
    batch: int = 2000,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    prefill: int | None = None,
    n_items: int = 50_000,
    dim: int = 64,
    seed: int = 0,
    warmup_batches: int = 1,
    keep_keys: bool = False,
    table_cache_users: int | None = None,
) -> dict:
    """Events/s of RedisBseStore.apply_batch in the bse-encoder's steady state, plus table size.

    Args:
        redis_url: a Redis the benchmark may write to (keys under a fresh random prefix, deleted
            afterwards unless keep_keys).
        n_users: users the events are spread over (uniformly; a batch of 2,000 over 500 users
            touches ~490 of them).
        events: measured events (after `warmup_batches` unmeasured batches).
        batch: events per apply_batch (the processor's batch_max_records).
        max_seq_len: sequence cap of the store.
        prefill: behaviours per user before measuring (default max_seq_len: every event evicts).
        table_cache_users: the store's decoded-table cache (None: the store default; 0 turns it
            off, which is the cold case of a stream whose users rarely recur).
    Returns:
        dict with events_per_s (measured events / summed apply time), batch_ms_p50/p90/max,
        distinct users per batch, and bse_bytes_per_user_L10000 (Redis MEMORY USAGE of one
        user's table with 10,000 behaviours, d=64, 16 x 8 buckets).
    """
    prefill = max_seq_len if prefill is None else prefill
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(seed)
    emb, labels = clustered_embeddings(n_items, dim=dim, seed=seed)
    by_cluster = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    hasher = SdimHasher(SdimConfig(dim=dim))
    version = TableVersion(hasher, emb)
    cache_kw = {} if table_cache_users is None else {"table_cache_users": table_cache_users}
    store = RedisBseStore(client, prefix, [version], max_seq_len=max_seq_len, **cache_kw)
    users = [f"user-{k:07d}" for k in range(n_users)]
    tastes = [rng.choice(len(by_cluster), 5, replace=False) for _ in users]
    try:
        t0 = time.perf_counter()
        if prefill:
            for k in range(0, n_users, 100):
                chunk = users[k : k + 100]
                seqs = [[f"i{i}" for i in _user_items(rng, by_cluster, tastes[k + j], prefill)] for j in range(len(chunk))]
                _prefill(store, chunk, seqs)
            store.rebuild(hasher, emb, users, model_version=version.model_version, item_bits=version.item_bits)
        prefill_s = time.perf_counter() - t0

        n_batches = warmup_batches + max(1, events // batch)
        user_idx = rng.integers(0, n_users, n_batches * batch)
        offset = 0
        times, distinct = [], []
        for b in range(n_batches):
            idx = user_idx[b * batch : (b + 1) * batch]
            beh = []
            for u in idx:
                item = _user_items(rng, by_cluster, tastes[u][:1], 1)[0]
                beh.append(Behaviour(users[u], f"i{item}", "events", 0, offset))
                offset += 1
            t = time.perf_counter()
            res = store.apply_batch(beh, {("events", 0): offset}, group="bench")
            dt = time.perf_counter() - t
            if res.n_applied != len(beh):
                raise RuntimeError(f"bench batch applied {res.n_applied} of {len(beh)}")
            if b >= warmup_batches:
                times.append(dt)
                distinct.append(res.n_users)

        # size at L = 10,000 with the default (production) hasher and dim 64
        size_store = store
        if max_seq_len != 10_000 or dim != 64:
            emb64, labels64 = clustered_embeddings(20_000, dim=64, seed=seed)
            size_store = RedisBseStore(client, prefix + "s", [TableVersion(SdimHasher(), emb64)], max_seq_len=10_000)
            by_c = [np.flatnonzero(labels64 == c) for c in range(int(labels64.max()) + 1)]
        else:
            by_c = by_cluster
        items = [f"i{i}" for i in _user_items(rng, by_c, np.arange(1, 6), 12_000)]
        for k in range(0, len(items), 2000):
            size_store.apply_batch([Behaviour("size-user", it) for it in items[k : k + 2000]])
        assert len(size_store.sequence("size-user", last_n=None)) == 10_000
        size = size_store.table_bytes("size-user", size_store.maintained_versions[0])
        n_events = batch * len(times)
        total = sum(times)
        return {
            "events_per_s": n_events / total,
            "events": n_events,
            "batch": batch,
            "n_users": n_users,
            "distinct_users_per_batch": statistics.median(distinct),
            "batch_ms_p50": 1000 * statistics.median(times),
            "batch_ms_p90": 1000 * float(np.quantile(times, 0.9)),
            "batch_ms_max": 1000 * max(times),
            "prefill_per_user": prefill,
            "prefill_s": prefill_s,
            "max_seq_len": max_seq_len,
            "table_cache_users": getattr(store, "table_cache_users", 0),
            "table_cache_hit_rate": getattr(store, "table_cache_hits", 0)
            / max(1, getattr(store, "table_cache_hits", 0) + getattr(store, "table_cache_misses", 0)),
            "bse_bytes_per_user_L10000": size,
            "prefix": prefix,
        }
    finally:
        if not keep_keys:
            for p in (prefix, prefix + "s"):
                keys = list(client.scan_iter(match=f"{p}:*", count=5000))
                for k in range(0, len(keys), 5000):
                    client.delete(*keys[k : k + 5000])
        client.close()


if __name__ == "__main__":  # python -m benchmarks.bse URL [n_users] [events] [batch] [table_cache_users] [prefill]
    import json
    import sys

    args = sys.argv[1:]
    kw = dict(zip(("n_users", "events", "batch", "table_cache_users", "prefill"), map(int, args[1:])))
    print(json.dumps(bench_bse_apply(args[0] if args else "redis://127.0.0.1:16391/0", **kw), indent=1))
