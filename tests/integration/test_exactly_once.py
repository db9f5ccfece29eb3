"""Processors killed with SIGKILL mid-stream, or facing a Redis restart, end exactly where a
from-scratch computation ends: no event lost, none applied twice."""

from __future__ import annotations

import itertools
import signal

import numpy as np
import pytest
import redis

from features.bse import Behaviour, InMemoryBseStore, RedisBseStore, TableVersion
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines.data.synthetic import SyntheticConfig, generate_events
from pipelines.produce import produce_events
from pipelines.stream.bse_encoder import load_item_embeddings
from tests.integration.procs import spawn_processor, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 100_000
EMB_SPEC = "random:3000:0"
MAX_SEQ_LEN = 300  # below the per-user sequence length, so evictions happen
# 220 users x (450 views + 8 impressions + clicks) is a little over 100k events.
SYN = SyntheticConfig(n_users=220, n_items=3000, seq_len=450, short_len=50, seed=11)


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


def test_bse_encoder_killed_mid_stream_ends_equal_to_from_scratch(settings, stack_endpoints):
    events = list(itertools.islice(generate_events(SYN), N_EVENTS))
    assert len(events) == N_EVENTS
    produce_events(events, settings, progress=False)
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix, versions=[_version()],
                                   max_seq_len=MAX_SEQ_LEN)

    first = _spawn(settings)
    try:
        reached = _wait_offsets(store, settings.events_topic, N_EVENTS // 3, first)
        first.send_signal(signal.SIGKILL)  # no chance to commit, flush or close
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert reached < N_EVENTS, "killed too late to test anything"

    second = _spawn(settings, "--max-idle-s", "5")
    try:
        _wait_offsets(store, settings.events_topic, N_EVENTS, second)
        assert second.wait(timeout=120) == 0
    finally:
        if second.poll() is None:
            second.kill()

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
