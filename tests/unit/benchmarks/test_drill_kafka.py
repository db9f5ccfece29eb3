"""The Kafka drill's own arithmetic (benchmarks/drill_kafka.py), without servers: its events, and
the comparison of end state with a from-scratch computation that turns differences into lost and
double-applied event counts. The drill itself runs in tests/integration/test_drill_kafka.py."""

from __future__ import annotations

from collections import defaultdict

import pytest

from benchmarks.drill_kafka import KafkaDrillConfig, _compare_state, drill_events
from pipelines.stream.feature_writer import FeatureKeys
from pipelines.stream.popularity import WEIGHTS


class _StateRedis:
    """The two reads _compare_state makes (HGETALL of counter hashes, ZRANGE of the popularity
    set), over dicts a test fills as the processors would have."""

    def __init__(self):
        self.hashes: dict[str, dict[str, str]] = defaultdict(dict)
        self.zsets: dict[str, dict[str, float]] = defaultdict(dict)

    def hgetall(self, key):
        return dict(self.hashes.get(key, {}))

    def zrange(self, key, start, end, withscores=False):
        return sorted(self.zsets.get(key, {}).items())


def _applied(events, prefix="d") -> _StateRedis:
    """The state the feature-writer and popularity processors leave after applying `events` once
    each (hour-bucket counters per user and item, weighted popularity per item)."""
    r, fk = _StateRedis(), FeatureKeys(prefix)
    kind = {"impression": "imp", "click": "clk", "view": "clk", "like": "lik"}
    for e in events:
        field = f"{kind[e.type.value]}:{e.ts // 3_600_000}"
        for key in (fk.user(e.user_id), fk.item(e.item_id)):
            r.hashes[key][field] = str(int(r.hashes[key].get(field, "0")) + 1)
            r.hashes[key]["ts"] = str(e.ts)  # a non-counter field, as the writer keeps the latest time
        if WEIGHTS[e.type] > 0:
            r.zsets[f"{prefix}:pop"][e.item_id] = r.zsets[f"{prefix}:pop"].get(e.item_id, 0.0) + WEIGHTS[e.type]
    return r


def test_config_errors_carry_the_values():
    with pytest.raises(ValueError, match=r"kill_at_fraction \(1.5\) must be in \(0, 1\)"):
        KafkaDrillConfig(kill_at_fraction=1.5)
    with pytest.raises(ValueError, match=r"events_per_s \(0\) must be >= 1"):
        KafkaDrillConfig(events_per_s=0)


def test_events_are_the_same_on_every_run_and_each_counts_once():
    cfg = KafkaDrillConfig(events=2_000, users=50, items=100)
    a, b = drill_events(cfg), drill_events(cfg)
    assert a == b and len({e.event_id for e in a}) == 2_000
    assert {e.type.value for e in a} == {"impression", "click", "view", "like"}  # none counts in two counters


def test_state_applied_exactly_once_compares_equal():
    events = drill_events(KafkaDrillConfig(events=3_000, users=40, items=60))
    assert _compare_state(_applied(events), "d", events) == {"missing": 0, "extra": 0, "popularity_items_wrong": 0}


def test_lost_and_double_applied_events_are_counted_as_events():
    events = drill_events(KafkaDrillConfig(events=3_000, users=40, items=60))
    lost = events[100:107]  # 7 events never applied
    twice = [e for e in events[500:600] if e.type.value == "like"][:3]  # 3 events applied twice
    r = _applied([e for e in events if e not in lost] + twice)
    got = _compare_state(r, "d", events)
    assert (got["missing"], got["extra"]) == (7, 3)
    assert got["popularity_items_wrong"] >= 1
