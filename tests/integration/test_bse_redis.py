"""Redis BSE store against a real redis-server: same checks as the in-memory unit tests, plus
round trips, the size goal and atomic offsets."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from features.bse import ArrayItemEmbeddings, Behaviour, InMemoryBseStore, RedisBseStore, TableVersion
from models.sdim_hash import SdimHasher
from tests.builders import behaviours
from tests.sdim_reference import naive_sdim

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=False)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield c, prefix
    keys = list(c.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        c.delete(*keys)
    c.close()


@pytest.fixture
def emb(item_embeddings):
    return item_embeddings


def _events(rng, n, n_users, start=0):
    return behaviours(rng, n, n_users, start=start, n_partitions=2)


def test_redis_bucket_path_matches_naive_and_memory_store(client, hasher, emb):
    c, prefix = client
    version = TableVersion(hasher, emb, item_bits=16)
    store = RedisBseStore(c, prefix, [version], max_seq_len=40)
    mem = InMemoryBseStore([version], max_seq_len=40)
    rng = np.random.default_rng(0)
    events = _events(rng, 300, n_users=3)
    for k in range(0, 300, 37):
        batch = events[k : k + 37]
        offsets = {("events", p): max(b.offset for b in batch if b.partition == p) + 1 for p in (0, 1)}
        store.apply_batch(batch, offsets, group="g")
        mem.apply_batch(batch, offsets, group="g")
    cands = emb.lookup([f"i{k}" for k in rng.integers(330, size=25)])
    for u in ("u0", "u1", "u2"):
        seq = [b.item_id for b in events if b.user_id == u][-40:]
        assert store.sequence(u) == seq
        got = store.lookup(u, version.name, cands)
        np.testing.assert_allclose(got, naive_sdim(emb.lookup(seq), cands, hasher), atol=2e-4)
        np.testing.assert_array_equal(got, mem.lookup(u, version.name, cands))
    assert store.committed_offsets("g") == mem.committed_offsets("g") == {("events", 0): 299, ("events", 1): 300}
    assert sorted(store.users()) == ["u0", "u1", "u2"]


def test_redis_redelivery_and_rebuild(client, hasher, emb):
    c, prefix = client
    store = RedisBseStore(c, prefix, [TableVersion(hasher, emb)], max_seq_len=30)
    rng = np.random.default_rng(1)
    events = _events(rng, 100, n_users=2, start=1000)
    assert store.apply_batch(events[:60], group="g").n_applied == 60
    r = store.apply_batch(events, group="g")  # first 60 redelivered
    assert (r.n_applied, r.n_skipped) == (40, 60)
    name = store.maintained_versions[0]
    before = c.get(f"{prefix}:bse:tab:{name}:u0")
    res = store.rebuild(hasher, emb, model_version="base")
    assert res.n_users == 2 and res.n_behaviours == 60
    assert c.get(f"{prefix}:bse:tab:{name}:u0") == before  # incremental == recomputed, bit for bit


def test_redis_apply_is_two_round_trips_and_lookup_one(client, hasher, emb, monkeypatch):
    c, prefix = client
    store = RedisBseStore(c, prefix, [TableVersion(hasher, emb)], max_seq_len=50)
    store.apply_batch(_events(np.random.default_rng(2), 200, n_users=50), group="g")
    sent = []
    real = redis.connection.Connection.send_packed_command
    monkeypatch.setattr(
        redis.connection.Connection, "send_packed_command", lambda self, *a, **k: (sent.append(1), real(self, *a, **k))[1]
    )
    store.apply_batch(_events(np.random.default_rng(3), 200, n_users=50, start=200), group="g")
    n_apply = len(sent)
    sent.clear()
    store.lookup("u1", store.maintained_versions[0], emb.lookup([f"i{k}" for k in range(500)]))
    # apply: offsets read + snapshot pipeline + Lua write (EVALSHA) = 3 packets for 50 users
    assert n_apply <= 3, n_apply
    assert len(sent) == 1


def test_redis_table_size_at_max_seq_len(client):
    """Size goal: one user's table at L = 10,000 (d=64, 16 x 8 buckets) within 16 KB of Redis memory."""
    c, prefix = client
    rng = np.random.default_rng(0)
    n_items, dim = 20_000, 64
    centers = rng.standard_normal((50, dim)) * 0.3
    labels = rng.integers(0, 50, n_items + 16)
    table = (centers[labels] + rng.standard_normal((n_items + 16, dim)) * 0.15).astype(np.float32)
    emb64 = ArrayItemEmbeddings([f"i{k}" for k in range(n_items)], table, 16)
    hasher = SdimHasher()
    store = RedisBseStore(c, prefix, [TableVersion(hasher, emb64)], max_seq_len=10_000)
    liked = np.flatnonzero(np.isin(labels[:n_items], [1, 2, 3, 4, 5]))  # a user with a few tastes
    items = [f"i{k}" for k in rng.choice(liked, 12_000)]
    for k in range(0, len(items), 2000):
        store.apply_batch([Behaviour("user-000001", it) for it in items[k : k + 2000]])
    size = store.table_bytes("user-000001", store.maintained_versions[0])
    assert 0 < size <= 16 * 1024, size


def test_fast_item_features_round_trip_and_read_the_same_values_as_feast(redis_url, tmp_path):
    """The packed-blob read path (features.item_features) against the same Redis."""
    import pandas as pd

    from features.errors import ItemFeatureSchemaMismatch
    from benchmarks.item_reads import bench_item_reads
    from features.item_features import ITEM_FEATURE_NAMES, RedisItemFeatures

    prefix = f"t{uuid.uuid4().hex[:8]}"
    fast = RedisItemFeatures.from_url(redis_url, prefix=prefix, cache_ttl_s=30)
    df = pd.DataFrame({"item_id": ["a", "b"], "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC")})
    for k, name in enumerate(ITEM_FEATURE_NAMES):
        df[name] = [k, 100 + k]
    try:
        fast.write(df)
        got = fast.read(["b", "nope", "a"])
        np.testing.assert_array_equal(got[0], 100 + np.arange(len(ITEM_FEATURE_NAMES)))
        assert np.isnan(got[1]).all()
        other = RedisItemFeatures(fast.r, prefix=prefix, names=ITEM_FEATURE_NAMES[::-1])
        with pytest.raises(ItemFeatureSchemaMismatch, match="'a'|'b'"):
            other.read(["a", "b"])
    finally:
        fast.r.delete(*fast.r.scan_iter(match=f"{prefix}:*"))
    # bench_item_reads raises unless the packed blobs equal Feast's online values for all 500
    # items; how much faster they are is the benchmark's to say (reports/), not a test's.
    res = bench_item_reads(n_items=500, repeats=3, redis_url=redis_url, work_dir=str(tmp_path))
    assert all(np.isfinite(v) and v > 0 for v in res.values()), res


def test_redis_two_writers_restart_and_rebuild_equal_from_scratch(client, hasher, emb):
    """Two store objects (two processors sharing partitions during a rebalance, each with its own
    decoded-table cache) alternate on the same keys, one is replaced by a fresh object (a restart,
    cold cache), batches are redelivered and a rebuild runs in between: the Redis state must stay
    bit-identical to an in-memory store fed the same events once."""
    c, prefix = client
    version = TableVersion(hasher, emb, item_bits=7)
    a = RedisBseStore(c, prefix, [version], max_seq_len=40)
    b = RedisBseStore(c, prefix, [version], max_seq_len=40)
    ref = InMemoryBseStore([version], max_seq_len=40, table_cache_users=0)
    rng = np.random.default_rng(9)
    events = _events(rng, 1200, n_users=12)
    writers = [a, b, a, a, b]
    for i, k in enumerate(range(0, 1200, 100)):
        batch = events[k : k + 100]
        offsets = {("events", p): max(e.offset for e in batch if e.partition == p) + 1 for p in (0, 1)}
        w = writers[i % len(writers)]
        w.apply_batch(batch, offsets, group="g")
        if i % 3 == 1:  # redelivery of the same batch: a no-op
            assert w.apply_batch(batch, offsets, group="g").n_applied == 0
        ref.apply_batch(batch, offsets, group="g")
        if i == 5:
            a = RedisBseStore(c, prefix, [version], max_seq_len=40)  # restart: cold cache
            writers = [a, b, a, a, b]
        if i == 7:
            b.rebuild(hasher, emb, model_version=version.model_version, item_bits=version.item_bits)
    assert a.table_cache_hits > 0 and b.table_cache_misses > 0
    users = [f"u{k}" for k in range(12)]
    for u in users:
        assert a.sequence(u) == ref.sequence(u)
        assert c.get(f"{prefix}:bse:tab:{version.name}:{u}") == ref._blobs[(version.name, u)]
    np.testing.assert_array_equal(a.tables(users, version.name), ref.tables(users, version.name))
    assert a.committed_offsets("g") == ref.committed_offsets("g")
