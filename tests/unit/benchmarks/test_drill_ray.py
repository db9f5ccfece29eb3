"""The Ray drill's own bookkeeping (benchmarks/drill_ray.py), without servers: when answers count
as recovered, which phase an answer belongs to, and the config's checks. The drill itself is
`recstream drill ray` (reports/drill_ray.md): two Ray nodes and a model load take minutes here."""

from __future__ import annotations

import pytest

from benchmarks.drill_ray import RayDrillConfig, _Answer, _Load, _phase


def _load(answers: list[_Answer]) -> _Load:
    load = _Load(url="http://unused", clients=1, users=1, k=1)
    load.answers.extend(answers)
    return load


def test_recovery_is_the_first_of_n_consecutive_undegraded_answers_after_the_restart():
    ok = lambda t: _Answer(t, 0.1, 200)  # noqa: E731
    degraded = lambda t: _Answer(t, 0.1, 200, degraded=True, reasons=("ranker:circuit_open",))  # noqa: E731
    failed = lambda t: _Answer(t, 0.1, 0, error="ConnectError")  # noqa: E731
    # appended out of send order, as concurrent clients finish out of order
    load = _load([ok(1.0), ok(2.0), degraded(10.0), ok(11.0), ok(12.0), failed(13.0), ok(15.0), ok(14.0), ok(16.0),
                  degraded(0.5)])
    assert load.undegraded_since(5.0, n=3) == 14.0  # 11-12 are cut short by the failed request at 13
    assert load.undegraded_since(5.0, n=4) is None
    assert load.undegraded_since(0.0, n=2) == 1.0  # answers before `t` are not looked at: 0.5 is degraded


@pytest.mark.parametrize("t,want", [(0.0, "before"), (9.99, "before"), (10.0, "down"), (20.0, "recovering"),
                                    (29.9, "recovering"), (30.0, "after")])
def test_phases_by_send_time(t, want):
    assert _phase(t, t_kill=10.0, t_restart=20.0, t_recovered=30.0) == want


def test_never_recovered_leaves_every_answer_after_the_restart_recovering():
    assert _phase(1e9, t_kill=10.0, t_restart=20.0, t_recovered=None) == "recovering"


@pytest.mark.parametrize("kwargs,needle", [({"clients": 0}, "clients (0) must be >= 1"),
                                           ({"down_s": 0.0}, "down_s (0.0) must be > 0")])
def test_bad_config_fails_with_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        RayDrillConfig(**kwargs)
