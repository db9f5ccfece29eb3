"""A processor stopped between its state write and its Kafka commit, or facing a Redis restart,
ends exactly where a from-scratch computation ends: no event lost, none applied twice. (Redis
restored from an older snapshot: test_older_snapshot.py; random SIGKILLs: test_feature_writer.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from features.bse import Behaviour, InMemoryBseStore, RedisBseStore, TableVersion
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines.data.synthetic import SyntheticConfig, generate_events
from pipelines.produce import produce_events
from pipelines.stream.base import EXIT_AFTER_WRITES_RC
from pipelines.stream.bse_encoder import load_item_embeddings
from tests.integration.kafka_utils import group_committed
from tests.integration.procs import N_EVENTS, finish, resume_skipped, spawn_processor, stream_100k, wait_for

pytestmark = pytest.mark.integration

EMB_SPEC = "random:3000:0"
MAX_SEQ_LEN = 300  # below the per-user sequence length, so evictions happen


def _spawn(settings, *args: str):
    return spawn_processor(settings, "bse-encoder", "--embeddings", EMB_SPEC, "--max-seq-len", str(MAX_SEQ_LEN), *args)


def _applied(store: RedisBseStore, topic: str) -> int:
    return sum(o for (t, _), o in store.committed_offsets("bse-encoder").items() if t == topic)


def _wait_offsets(store, topic, at_least: int, proc, timeout_s: float = 300) -> int:
    return wait_for(lambda: _applied(store, topic), at_least, proc, timeout_s)


def _version() -> TableVersion:
    emb = load_item_embeddings(EMB_SPEC)
    return TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb)


def _expected(events) -> InMemoryBseStore:
    ref = InMemoryBseStore(versions=[_version()], max_seq_len=MAX_SEQ_LEN)
    ref.apply_batch([Behaviour(e.user_id, e.item_id) for e in events if e.is_positive])
    return ref


def _assert_same_state(store: RedisBseStore, ref: InMemoryBseStore, users: list[str]) -> None:
    v = _version()
    for u in users:
        assert store.sequence(u) == ref.sequence(u), f"sequence of {u} differs"
    np.testing.assert_array_equal(store.tables(users, v.name), ref.tables(users, v.name))


def test_bse_encoder_stopped_between_state_write_and_commit_resumes_without_reapplying(settings):
    """The crash window by construction: the first run exits right after its 60th state write,
    before that batch's Kafka commit (the --exit-after-writes test hook), so the group's committed
    offsets lag the offsets stored with the state. The restarted run must skip exactly those
    records (it reports how many), and the end state must equal a from-scratch computation."""
    events = stream_100k()
    produce_events(events, settings, progress=False)
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix, versions=[_version()],
                                   max_seq_len=MAX_SEQ_LEN)

    finish(_spawn(settings, "--exit-after-writes", "60"), timeout_s=300, rc=EXIT_AFTER_WRITES_RC)
    stored = {p: o for (t, p), o in store.committed_offsets("bse-encoder").items() if t == settings.events_topic}
    committed = group_committed(settings.kafka_bootstrap, "recstream.bse-encoder", settings.events_topic, stored)
    in_window = sum(o - committed.get(p, 0) for p, o in stored.items())  # applied, never committed
    assert 0 < in_window and sum(stored.values()) < N_EVENTS, (stored, committed)

    second = _spawn(settings, "--max-idle-s", "5")
    _wait_offsets(store, settings.events_topic, N_EVENTS, second)
    out = finish(second)
    assert resume_skipped(out, "bse-encoder") == in_window, out[-3000:]

    ref = _expected(events)
    users = sorted({e.user_id for e in events})
    _assert_same_state(store, ref, users)


def test_redis_restart_under_load_loses_nothing(settings, stack_endpoints):
    if stack_endpoints.stack is None:
        pytest.fail("this test restarts redis-server: run it with the local stack launcher, not external servers")
    events = list(itertools.islice(generate_events(SyntheticConfig(n_users=100, n_items=3000, seq_len=300, seed=5)), 30_000))
    produce_events(events, settings, progress=False)
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix, versions=[_version()],
                                   max_seq_len=MAX_SEQ_LEN)
    proc = _spawn(settings, "--max-idle-s", "15")
    try:
        _wait_offsets(store, settings.events_topic, 5_000, proc)
        stack_endpoints.stack.restart_redis(kill=True)  # SIGKILL: only the append-only file survives
        _wait_offsets(store, settings.events_topic, len(events), proc)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ref = _expected(events)
    _assert_same_state(store, ref, sorted({e.user_id for e in events}))
