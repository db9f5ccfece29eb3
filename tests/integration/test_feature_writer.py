"""feature-writer on the real stack: Kafka -> Redis counters -> Feast (Redis online, parquet offline),
compared with features computed from the raw events by an independent oracle (tests/feature_oracle.py)."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import redis

from features.feast_repo import repo_for_settings
from features.item_features import RedisItemFeatures
from features.repo.definitions import ITEM_FEATURES, USER_FEATURES
from pipelines.produce import produce_events
from tests.builders import mixed_events
from tests.feature_oracle import item_frame, user_frame
from tests.integration.kafka_utils import group_committed
from tests.integration.procs import N_EVENTS, finish, resume_skipped, spawn_processor, stream_100k, wait_for

pytestmark = pytest.mark.integration


def _assert_frames_match(actual: pd.DataFrame, expected: pd.DataFrame, key: str, features: dict) -> None:
    a = actual.set_index(key).loc[expected[key]]
    e = expected.set_index(key)
    for f, t in features.items():
        if str(t) == "String":
            assert list(a[f]) == list(e[f]), f
        else:
            np.testing.assert_allclose(a[f].astype(float).to_numpy(), e[f].astype(float).to_numpy(), rtol=1e-5, err_msg=f)


def test_feature_writer_killed_mid_stream_matches_from_scratch(settings):
    events = stream_100k()
    produce_events(events, settings, progress=False)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    offsets_key = f"{settings.redis_prefix}:offsets:feature-writer:{settings.events_topic}"
    applied = lambda: sum(int(v) for v in r.hgetall(offsets_key).values())  # noqa: E731

    # The deployed layout: the writer counts, a feature-publisher process publishes its outbox.
    # Both are SIGKILLed at different points and restarted.
    first = spawn_processor(settings, "feature-writer", "--publish", "separate")
    publisher = spawn_processor(settings, "feature-publisher")
    try:
        wait_for(applied, N_EVENTS // 4, first)
        publisher.send_signal(signal.SIGKILL)
        reached = wait_for(applied, N_EVENTS // 2, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        publisher.wait(timeout=30)
    finally:
        for p in (first, publisher):
            if p.poll() is None:
                p.kill()
    assert reached < N_EVENTS
    assert r.hlen(f"{settings.redis_prefix}:fw:dirty:online:i") > 0  # the killed publisher left work behind
    # A random kill may land in the window between state write and commit, or not; either way the
    # restarted writer must skip exactly the records applied but not committed.
    stored = {int(p): int(o) for p, o in r.hgetall(offsets_key).items()}
    committed = group_committed(settings.kafka_bootstrap, "recstream.feature-writer", settings.events_topic, stored)
    in_window = sum(o - committed.get(p, 0) for p, o in stored.items())

    second = spawn_processor(settings, "feature-writer", "--publish", "separate", "--max-idle-s", "5")
    wait_for(applied, reached + 1, second)  # past the group's wait for the killed member
    publisher = spawn_processor(settings, "feature-publisher", "--max-idle-s", "10")
    wait_for(applied, N_EVENTS, second)
    assert resume_skipped(finish(second), "feature-writer") == in_window
    finish(publisher)

    exp_users, exp_items = user_frame(events), item_frame(events)
    repo = repo_for_settings(settings)
    _assert_frames_match(repo.online_user_features(list(exp_users["user_id"])), exp_users, "user_id", USER_FEATURES)
    _assert_frames_match(repo.online_item_features(list(exp_items["item_id"])), exp_items, "item_id", ITEM_FEATURES)

    # Serving's user read (registry resolved once) gives Feast's values on the Redis online store.
    from features.feast_online import OnlineRowReader
    from features.vectors import user_raw_from_frame, user_raw_from_rows

    user_ids = list(exp_users["user_id"]) + ["never-seen"]
    np.testing.assert_array_equal(user_raw_from_rows(OnlineRowReader(repo).rows(user_ids)),
                                  user_raw_from_frame(repo.online_user_features(user_ids)))

    # The fast read path serves the same item values as Feast.
    fast = RedisItemFeatures.from_url(settings.redis_url, prefix=settings.redis_prefix).read(list(exp_items["item_id"]))
    np.testing.assert_allclose(fast, exp_items[list(ITEM_FEATURES)].to_numpy(dtype=np.float32), rtol=1e-5)

    # Offline store: the clean stop flushed the outbox, so the point-in-time join as of each
    # user's last event returns the final values.
    entity = exp_users[["user_id", "event_timestamp"]].copy()
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], unit="ms", utc=True)
    hist = repo.historical_features(entity, user_features=["clicks_7d", "impressions_7d"], item_features=[])
    np.testing.assert_array_equal(hist["clicks_7d"].to_numpy(), exp_users["clicks_7d"].to_numpy())
    assert r.hlen(f"{settings.redis_prefix}:fw:dirty:online:u") == 0


def test_feature_writer_survives_redis_restart_under_load(settings, stack_endpoints):
    if stack_endpoints.stack is None:
        pytest.fail("this test restarts redis-server: run it with the local stack launcher, not external servers")
    # every event type (ratings 1-5, likes, purchases), contexts with a genre or a category, 10 days
    events = mixed_events(30_000, n_users=100, n_items=2000, seed=5)
    produce_events(events, settings, progress=False)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    offsets_key = f"{settings.redis_prefix}:offsets:feature-writer:{settings.events_topic}"

    def applied() -> int:
        try:
            return sum(int(v) for v in r.hgetall(offsets_key).values())
        except redis.ConnectionError:
            return 0

    proc = spawn_processor(settings, "feature-writer", "--max-idle-s", "15")
    try:
        wait_for(applied, 5_000, proc)
        stack_endpoints.stack.restart_redis(kill=True)  # SIGKILL: only the append-only file survives
        wait_for(applied, len(events), proc)
        finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    exp_users, exp_items = user_frame(events), item_frame(events)
    repo = repo_for_settings(settings)
    _assert_frames_match(repo.online_user_features(list(exp_users["user_id"])), exp_users, "user_id", USER_FEATURES)
    _assert_frames_match(repo.online_item_features(list(exp_items["item_id"])), exp_items, "item_id", ITEM_FEATURES)
