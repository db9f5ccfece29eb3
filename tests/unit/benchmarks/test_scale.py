"""The scale benchmark's own arithmetic (benchmarks/scale.py), without servers: its configuration
checks, its workload, the count of lost and double-applied events from stored sequences, and the
report. The benchmark itself runs against a real Redis Cluster (`recstream bench stream --cluster`)."""

from __future__ import annotations

import json

import pytest

from benchmarks.scale import ScaleConfig, scale_events, sequence_errors, write_report
from recstream.events import Event, EventType


def _ev(n: int, user: str, item: str, kind: EventType = EventType.click) -> Event:
    return Event(event_id=f"e{n}", user_id=user, item_id=item, type=kind, ts=1_700_000_000_000 + n)


def test_config_errors_carry_the_values():
    with pytest.raises(ValueError, match=r"instances \(1, 9\) must be within 1..partitions \(8\)"):
        ScaleConfig(instances=(1, 9))
    with pytest.raises(ValueError, match=r"processors \('feature-writer',\)"):
        ScaleConfig(processors=("feature-writer",))
    with pytest.raises(ValueError, match=r"repeats \(0\) must be >= 1"):
        ScaleConfig(repeats=0)
    with pytest.raises(ValueError, match=r"failover_at_fraction \(0.0\)"):
        ScaleConfig(failover_at_fraction=0.0)


def test_workload_is_fixed_and_every_sequence_fits_the_kept_length():
    cfg = ScaleConfig(events=5_000, users=50)
    a, b = scale_events(cfg), scale_events(cfg)
    assert a == b and len(a) == 5_000 and len({e.user_id for e in a}) == 50
    positives = {}
    for e in a:
        positives[e.user_id] = positives.get(e.user_id, 0) + e.is_positive
    assert max(positives.values()) <= cfg.max_seq_len  # nothing evicted: a sequence counts applications


def test_sequence_errors_count_missing_and_repeated_events():
    events = [_ev(0, "u1", "a"), _ev(1, "u1", "b"), _ev(2, "u1", "a"), _ev(3, "u2", "c"),
              _ev(4, "u2", "z", EventType.impression)]  # not positive: never in a sequence
    exact = {"u1": ["a", "b", "a"], "u2": ["c"]}
    assert sequence_errors(events, lambda u: exact.get(u, []), exact) == {"lost": 0, "double": 0, "in_order": True}

    lost_one = {"u1": ["a", "b"], "u2": ["c"]}  # the second "a" never applied
    assert sequence_errors(events, lambda u: lost_one.get(u, []), lost_one) == {"lost": 1, "double": 0, "in_order": False}

    replayed = {"u1": ["a", "b", "a", "b", "a"], "u2": ["c", "c"]}  # a batch applied twice
    assert sequence_errors(events, lambda u: replayed.get(u, []), replayed) == {"lost": 0, "double": 3, "in_order": False}

    reordered = {"u1": ["b", "a", "a"], "u2": ["c"]}  # same counts, wrong order: not exact, nothing lost
    assert sequence_errors(events, lambda u: reordered.get(u, []), reordered) == {"lost": 0, "double": 0, "in_order": False}

    stray = {**exact, "ghost": ["q", "r"]}  # state for a user no event names
    assert sequence_errors(events, lambda u: stray.get(u, []), stray) == {"lost": 0, "double": 2, "in_order": False}


def test_report_has_the_flat_keys_and_a_table(tmp_path):
    res = {"instances": [1, 2], "processors": ["bse-encoder"], "events": 10, "users": 2, "partitions": 2,
           "batch_max_records": 5, "machine": "m"}
    for n, rate in ((1, 100.0), (2, 150.0)):
        res[f"cluster_events_per_s_{n}"] = rate
        res[f"cluster_events_per_s_min_{n}"], res[f"cluster_events_per_s_max_{n}"] = rate - 10, rate + 20
        res[f"cluster_exact_{n}"] = True
        for role in ("instances", "redis", "kafka", "bench"):
            res[f"cluster_cpu_s_per_1k_events_{role}_{n}"] = 0.5
            res[f"cluster_cores_busy_{role}_{n}"] = 0.25
    res["cluster_speedup_2_vs_1"] = 1.5
    res["cluster_cores_bound_events_per_s"] = 300.0
    res.update(failover_lost_events=0, failover_double_applied=0, failover_end_state_exact=True,
               failover_records_fell_back=12, failover_rewinds=1, failover_killed_master_partitions=1,
               failover_applied_at_kill=4, failover_replica_promoted_s=2.0, failover_caught_up_s=3.0,
               failover_instance_errors=0)
    write_report(res, tmp_path)
    assert json.loads((tmp_path / "scale.json").read_text()) == res
    md = (tmp_path / "scale.md").read_text()
    assert "| bse-encoder | 100 (90-120) | 150 (140-170) | 1.50x | yes |" in md
    assert "- bse-encoder: with 2 instances, 150 events/s is 50% of the 300 events/s" in md and "| **lost events** | **0** |" in md
