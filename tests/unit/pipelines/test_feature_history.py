"""Offline history for backfills: batch segments and the held-back, de-duplicated offline rows
(the Redis side runs in tests/integration/test_stream_training.py)."""

from __future__ import annotations

import pandas as pd

from pipelines.stream.base import SourcedEvent
from pipelines.stream.feature_publisher import FeaturePublisher
from pipelines.stream.feature_writer import segments
from recstream.events import Event, EventType


T0 = 880_000_000_000  # ML-100k's era, in ms


def _se(user: str, item: str, ts: int, partition: int = 0, offset: int = 0) -> SourcedEvent:
    """An event at T0 + ts ms."""
    return SourcedEvent(Event(event_id=f"{user}-{item}-{ts}", user_id=user, item_id=item, type=EventType.rating,
                              ts=T0 + ts), partition, offset, T0 + ts)


def test_segments_never_hold_two_event_times_of_one_entity():
    evs = [_se("u1", "a", 1), _se("u1", "b", 1), _se("u2", "a", 1), _se("u1", "c", 2), _se("u3", "d", 2),
           _se("u3", "a", 2), _se("u2", "e", 3)]
    segs = segments(evs)
    assert [[se.event.item_id for se in s] for s in segs] == [["a", "b", "a"], ["c", "d", "a", "e"]]
    for seg in segs:
        ts: dict = {}
        for se in seg:
            for key in (("u", se.event.user_id), ("i", se.event.item_id)):
                assert ts.setdefault(key, se.event.ts) == se.event.ts
    assert sum(len(s) for s in segs) == len(evs)


def test_segments_merge_partitions_by_time_keeping_each_partitions_order():
    p0 = [_se("u1", "a", 5, 0, 10), _se("u1", "b", 9, 0, 11)]
    p1 = [_se("u2", "c", 7, 1, 3), _se("u2", "d", 8, 1, 4)]
    order = [(se.partition, se.offset) for seg in segments(p0 + p1) for se in seg]
    assert order == [(0, 10), (1, 3), (1, 4), (0, 11)]


class _Client:
    def register_script(self, _src):
        return lambda **_: []


class _Repo:
    def __init__(self):
        self.users: list[pd.DataFrame] = []

    def push_user_features(self, df, online=True):
        assert not online
        assert df.index.equals(pd.RangeIndex(len(df)))  # else Feast gets an extra index column
        self.users.append(df.copy())

    def push_item_features(self, df, online=True):
        assert not online


def _publisher(state: dict[str, tuple[int, int]]):
    """A publisher whose Redis aggregation returns `state[user] = (ts, clicks)`."""
    repo = _Repo()
    pub = FeaturePublisher(_Client(), "t", repo=repo, offline_history=True)

    def aggregate(users, items):
        rows = [[state[u][0], state[u][0], 0, 0, 0, state[u][1], state[u][1], state[u][1], 0, 0, 0, "0"] for u in users]
        return rows + [[] for _ in users]  # no items; an empty genre list per user

    pub._aggregate = aggregate
    return pub, repo


def _written(repo) -> list[tuple[str, int, int]]:
    if not repo.users:
        return []
    df = pd.concat(repo.users)
    return [(u, int(t.value // 1_000_000), int(c)) for u, t, c in zip(df["user_id"], df["event_timestamp"], df["clicks_7d"])]


def test_history_rows_are_deduplicated_and_the_latest_is_held_back():
    state = {"u1": (1000, 1), "u2": (1500, 1)}
    pub, repo = _publisher(state)
    pub.record_history(["u1", "u2"], [])
    state["u1"] = (1000, 2)  # more events at the same instant, in a later segment
    pub.record_history(["u1"], [])
    pub.flush_history(final=False)
    assert _written(repo) == []  # both entities' latest rows could still be superseded
    state["u1"] = (2000, 3)
    pub.record_history(["u1"], [])
    pub.flush_history(final=False)
    assert _written(repo) == [("u1", 1000, 2)]  # one row per (entity, event time): the last state at it
    pub.flush_history(final=True)
    assert sorted(_written(repo)) == [("u1", 1000, 2), ("u1", 2000, 3), ("u2", 1500, 1)]
    assert pub._hist_covered[0] == {"u1", "u2"}


def test_a_failed_offline_push_keeps_the_rows_for_the_next_flush():
    state = {"u1": (1000, 1)}
    pub, repo = _publisher(state)
    pub.record_history(["u1"], [])
    state["u1"] = (2000, 2)
    pub.record_history(["u1"], [])
    calls = {"n": 0}
    ok_push = repo.push_user_features

    def flaky(df, online=True):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("offline store down")
        ok_push(df, online)

    repo.push_user_features = flaky
    try:
        pub.flush_history(final=False)
    except ConnectionError:
        pass
    state["u1"] = (3000, 3)
    pub.record_history(["u1"], [])
    pub.flush_history(final=True)
    assert _written(repo) == [("u1", 1000, 1), ("u1", 2000, 2), ("u1", 3000, 3)]
