"""BSE store: bucket path vs a naive loop over the raw sequence, exactly-once, rebuild, codec."""

from __future__ import annotations

import numpy as np
import pytest

from features.bse import ArrayItemEmbeddings, Behaviour, InMemoryBseStore, TableVersion, _codec
from features.bse.types import _UserSnapshot
from features.errors import CorruptTable, TableVersionMismatch, UnknownTableVersion
from tests.builders import behaviours
from tests.sdim_reference import naive_sdim


def _events(rng, n: int, n_users: int, start_offset: int = 0) -> list[Behaviour]:
    return behaviours(rng, n, n_users, start=start_offset)


def test_bucket_path_matches_naive_with_eviction(bse_store, hasher, item_embeddings):
    rng = np.random.default_rng(0)
    events = _events(rng, 300, n_users=3)  # ~100 per user against max_seq_len=40: many evictions
    for k in range(0, 300, 37):
        bse_store.apply_batch(events[k : k + 37], group="g")
    version = bse_store.maintained_versions[0]
    cands = item_embeddings.lookup([f"i{k}" for k in rng.integers(330, size=25)])
    for u in ("u0", "u1", "u2"):
        seq = [b.item_id for b in events if b.user_id == u][-40:]
        assert bse_store.sequence(u) == seq
        got = bse_store.lookup(u, version, cands)
        want = naive_sdim(item_embeddings.lookup(seq), cands, hasher)
        assert got.shape == (25, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-4)  # 16-bit item quantisation
        # the normalisation matters: an un-normalised bucket mean would not pass
        assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 0.8


def test_default_quantisation_is_close_and_rebuild_is_bit_identical(hasher, item_embeddings):
    store = InMemoryBseStore([TableVersion(hasher, item_embeddings)], max_seq_len=50)
    rng = np.random.default_rng(1)
    events = _events(rng, 400, n_users=2)
    for k in range(0, 400, 50):
        store.apply_batch(events[k : k + 50])
    v = store.version(store.maintained_versions[0])
    before = {u: store._read_blobs([u], v.name)[0] for u in ("u0", "u1")}
    res = store.rebuild(hasher, item_embeddings, model_version=v.model_version, item_bits=v.item_bits)
    assert (res.n_users, res.n_behaviours) == (2, 100)
    for u in ("u0", "u1"):
        # integer sums: add/evict cycles leave exactly what a recomputation gives (no drift)
        assert store._read_blobs([u], v.name)[0] == before[u]
        cands = item_embeddings.lookup([f"i{k}" for k in range(20)])
        want = naive_sdim(item_embeddings.lookup(store.sequence(u)), cands, hasher)
        np.testing.assert_allclose(store.lookup(u, v, cands), want, atol=1e-2)


def test_redelivery_is_skipped_and_offsets_never_move_back(bse_store):
    rng = np.random.default_rng(2)
    events = _events(rng, 60, n_users=4, start_offset=100)
    r1 = bse_store.apply_batch(events[:40], {("events", 0): 140}, group="g")
    assert (r1.n_applied, r1.n_skipped) == (40, 0)
    state = {u: bse_store.sequence(u) for u in ("u0", "u1", "u2", "u3")}
    r2 = bse_store.apply_batch(events[:40], {("events", 0): 140}, group="g")  # redelivered
    assert (r2.n_applied, r2.n_skipped) == (0, 40)
    assert {u: bse_store.sequence(u) for u in state} == state
    r3 = bse_store.apply_batch(events[20:], {("events", 0): 160}, group="g")  # overlapping
    assert (r3.n_applied, r3.n_skipped) == (20, 20)
    assert bse_store.committed_offsets("g") == {("events", 0): 160}
    bse_store.apply_batch([], {("events", 0): 150}, group="g")
    assert bse_store.committed_offsets("g") == {("events", 0): 160}
    assert bse_store.committed_offsets("other") == {}
    for u in state:
        assert bse_store.sequence(u) == [b.item_id for b in events if b.user_id == u]


def test_lost_compare_and_set_rereads_and_applies_once(bse_store):
    """A second writer lands between our snapshot and our write: we must retry, not double-apply."""
    rng = np.random.default_rng(3)
    events = _events(rng, 10, n_users=1)
    other = [Behaviour("u0", "i999", "events", 1, 0)]
    real_read = bse_store._read_users
    calls = []

    def racing_read(n_new, versions) -> dict[str, _UserSnapshot]:
        snap = real_read(n_new, versions)
        if not calls:
            calls.append(1)
            bse_store.apply_batch(other, group="g")  # the concurrent writer
        return snap

    bse_store._read_users = racing_read
    res = bse_store.apply_batch(events, group="g")
    assert res.n_attempts == 2
    assert bse_store.sequence("u0") == ["i999"] + [b.item_id for b in events]


def test_new_version_and_lowered_cap_build_from_full_sequence(hasher, item_embeddings):
    rng = np.random.default_rng(4)
    events = _events(rng, 120, n_users=1)
    store = InMemoryBseStore([TableVersion(hasher, item_embeddings, item_bits=16)], max_seq_len=100)
    store.apply_batch(events[:100])
    # a second process maintains a new version and a lower cap, over the same state
    store.max_seq_len = 30
    v2 = TableVersion(hasher, item_embeddings, model_version="v2", item_bits=16)
    store.register_version(v2)
    store.apply_batch(events[100:])
    seq = [b.item_id for b in events][-30:]
    assert store.sequence("u0") == seq
    cands = item_embeddings.lookup(["i1", "i2", "i3"])
    want = naive_sdim(item_embeddings.lookup(seq), cands, hasher)
    for v in store.maintained_versions:
        np.testing.assert_allclose(store.lookup("u0", v, cands), want, atol=2e-4)


def test_unknown_user_version_and_param_mismatch(bse_store, hasher, item_embeddings):
    version = bse_store.maintained_versions[0]
    out = bse_store.lookup("nobody", version, np.ones((3, 16), np.float32))
    assert out.shape == (3, 16) and not out.any()
    with pytest.raises(UnknownTableVersion, match="nope"):
        bse_store.lookup("nobody", "nope", np.ones((3, 16), np.float32))
    scaled = ArrayItemEmbeddings([f"i{k}" for k in range(300)], item_embeddings.table * 2, 8)
    with pytest.raises(TableVersionMismatch, match="step"):
        bse_store.register_version(TableVersion(hasher, scaled, item_bits=16))


def test_codec_roundtrip_and_corruption():
    rng = np.random.default_rng(5)
    tables = []
    for hi in (1, 3, 40_000, 2**40):
        t = rng.integers(-hi, hi, (16, 8, 64))
        t[2] = 0
        t[2, 5] = t[0].sum(0)  # one full bucket, others empty
        t[1:, 0] = 0
        t[1:, 0] = t[0].sum(0) - t[1:].sum(1)  # every signature sums to the same total
        blob = _codec.encode(t)
        np.testing.assert_array_equal(_codec.decode(blob, (16, 8, 64)), t)
        tables.append(t)
    many = _codec.encode_many(np.stack(tables))
    np.testing.assert_array_equal(_codec.decode_many(many, (16, 8, 64)), np.stack(tables))
    with pytest.raises(ValueError, match="blob 1"):
        _codec.decode_many([many[0], many[1][:-1]], (16, 8, 64))
    with pytest.raises(ValueError):
        _codec.decode(blob[:-1])
    with pytest.raises(ValueError, match="shape"):
        _codec.decode(blob, (16, 8, 32))


def test_corrupt_blob_names_user_and_version(bse_store):
    bse_store.apply_batch([Behaviour("u0", "i1")])
    version = bse_store.maintained_versions[0]
    bse_store._blobs[(version, "u0")] = b"\x01garbage"
    with pytest.raises(CorruptTable, match="u0"):
        bse_store.lookup("u0", version, np.ones((1, 16), np.float32))


def _reference_blob(table: np.ndarray) -> bytes:
    """The documented blob format written out bit by bit in plain Python (independent of _codec):
    header <BHIH, a width byte per row (255 = the widest bucket of signatures 1.., derived),
    then each stored row as w-bit two's complement values, little-endian bit order."""
    import struct

    n_sig, n_b, d = table.shape
    widths = [[0 if not np.abs(r).max() else int(np.abs(r).max()).bit_length() + 1 for r in sig] for sig in table]
    for j in range(1, n_sig):
        widths[j][int(np.argmax(widths[j]))] = 255
    out = bytearray(struct.pack("<BHIH", 1, n_sig, n_b, d)) + bytes(w for ws in widths for w in ws)
    for j in range(n_sig):
        for b in range(n_b):
            w = widths[j][b]
            if w in (0, 255):
                continue
            bits = 0
            for p, v in enumerate(table[j, b].tolist()):
                bits |= (int(v) & ((1 << w) - 1)) << (p * w)
            out += bits.to_bytes((w * d + 7) // 8, "little")
    return bytes(out)


@pytest.mark.parametrize("shape", [(16, 8, 64), (16, 8, 16), (3, 4, 5), (1, 8, 64)])
def test_codec_matches_reference_format_for_every_width(shape):
    """Vectorised pack/unpack (32-bit and 64-bit paths, aligned and unaligned rows) is byte-for-
    byte the documented format, for int32 and int64 tables, and decodes back exactly."""
    rng = np.random.default_rng(11)
    n_sig, n_b, d = shape
    tables = []
    for k in range(40):
        hi = 2 ** int(rng.integers(0, 45 if k % 4 else 31))  # widths 1..46 bits, many per table
        t = rng.integers(-hi, hi + 1, (n_sig, n_b, d)) * (rng.random((n_sig, n_b, 1)) < 0.8)
        t[1:, 0] = 0
        t[1:, 0] = t[0].sum(0) - t[1:].sum(1)  # every signature sums to the same total
        tables.append(t)
    stacked = np.stack(tables)
    blobs = _codec.encode_many(stacked)
    assert blobs == [_reference_blob(t) for t in tables]
    np.testing.assert_array_equal(_codec.decode_many(blobs, shape), stacked)
    small = [i for i, t in enumerate(tables) if np.abs(t).max() < 2**30]
    as32 = stacked[small].astype(np.int32)
    assert _codec.encode_many(as32) == [blobs[i] for i in small]
    dec32 = _codec.decode_many([blobs[i] for i in small], shape, np.int32)
    assert dec32.dtype == np.int32
    np.testing.assert_array_equal(dec32, as32)


def test_item_signatures_are_memoised_and_match_the_hasher(hasher, item_embeddings):
    v = TableVersion(hasher, item_embeddings, item_bits=16)
    ids = [f"i{k}" for k in (5, 7, 5, 299, 310, 400)]  # repeats and OOV ids
    want = hasher.signatures_np(item_embeddings.lookup(ids))
    np.testing.assert_array_equal(v.item_signatures(ids), want)
    n = v.codes.n_computed
    assert n == len(set(item_embeddings.rows(ids).tolist()))  # each distinct row hashed once
    np.testing.assert_array_equal(v.item_signatures(ids[::-1]), want[::-1])
    assert v.codes.n_computed == n  # nothing hashed again
    sigs, q = v.codes.codes(ids)
    np.testing.assert_array_equal(q, _codec.quantize(item_embeddings.lookup(ids), v.step, v.item_bits))


def test_table_cache_hits_only_for_identical_bytes(hasher, item_embeddings):
    """The decoded-table cache is keyed by the blob bytes: a blob changed behind the store's
    back (another writer) is decoded again, and results stay equal to a cache-less store."""
    rng = np.random.default_rng(7)
    events = _events(rng, 400, n_users=5)
    v = TableVersion(hasher, item_embeddings, item_bits=16)
    cached = InMemoryBseStore([v], max_seq_len=40)
    plain = InMemoryBseStore([v], max_seq_len=40, table_cache_users=0)
    for k in range(0, 200, 50):
        cached.apply_batch(events[k : k + 50])
        plain.apply_batch(events[k : k + 50])
    assert cached.table_cache_hits > 0 and plain.table_cache_hits == 0
    # another writer replaces u0's table (same counter) with the table of a different sequence
    other = InMemoryBseStore([v], max_seq_len=40)
    other.apply_batch([Behaviour("u0", f"i{k}") for k in range(40)])
    foreign = other._blobs[(v.name, "u0")]
    cached._blobs[(v.name, "u0")] = foreign
    plain._blobs[(v.name, "u0")] = foreign
    misses = cached.table_cache_misses
    for k in range(200, 400, 50):
        cached.apply_batch(events[k : k + 50])
        plain.apply_batch(events[k : k + 50])
    assert cached.table_cache_misses > misses
    users = [f"u{k}" for k in range(5)]
    np.testing.assert_array_equal(cached.tables(users, v), plain.tables(users, v))
    for u in users:
        assert cached._blobs[(v.name, u)] == plain._blobs[(v.name, u)]
