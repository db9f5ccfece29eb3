"""services/breaker.py: a dead stage is noticed once, skipped for open_ms, then probed."""

from __future__ import annotations

import asyncio

from services.api import RecommendRequest
from services.breaker import CircuitBreaker
from services.config import CircuitBreakerConfig
from services.stages import StageResult
from tests.unit.services.test_pipeline import _rec, artifacts  # noqa: F401  (module fixture)


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_then_lets_exactly_one_probe_through():
    clock = _Clock()
    b = CircuitBreaker("ranker", CircuitBreakerConfig(failures_to_open=3, open_ms=1000), clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.allow() and not b.is_open
    b.success()  # a success in between resets the count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.is_open and not b.allow()
    clock.t += 0.999
    assert not b.allow()
    clock.t += 0.002
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # the others keep falling back while it runs
    b.failure()  # the probe failed: open again for a full open_ms
    assert not b.allow()
    clock.t += 1.001
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and b.allow()


def test_a_dead_ranker_costs_one_deadline_per_open_period_not_one_per_request(artifacts):  # noqa: F811
    calls = []

    def dead(req):
        calls.append(req)
        raise ConnectionError("replica gone")

    rec, _, _ = _rec(artifacts, circuit_breaker={"failures_to_open": 3, "open_ms": 60_000})
    rec.ranker = dead
    answers = [asyncio.run(rec.recommend(RecommendRequest(user_id="u1", k=5))) for _ in range(10)]
    assert len(calls) == 3
    assert [a.degraded_reasons for a in answers[:3]] == [["ranker:error"]] * 3
    assert all(a.degraded_reasons == ["ranker:circuit_open"] for a in answers[3:])
    assert all(len(a.items) == 5 for a in answers)  # the coarse order, as for any ranker outage
    assert [i.item_id for i in answers[0].items] == [i.item_id for i in answers[-1].items]

    def alive(req):
        return StageResult(items=[(i, 1.0 - n / 100) for n, i in enumerate(req.items)], version=req.version)

    rec.ranker = alive
    rec.breakers["ranker"].open_until = 0.0  # the open period is over: the next request probes
    probe = asyncio.run(rec.recommend(RecommendRequest(user_id="u1", k=5)))
    assert probe.degraded_reasons == [] and not rec.breakers["ranker"].is_open
