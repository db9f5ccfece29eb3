import asyncio
import time
from collections import Counter

from recstream.events import ImpressionLog
from services.api import RecommendRequest
from services.config import ServeConfig
from services.impression_log import ImpressionLogger
from services.pipeline import Recommender, assign_variant
from services.stages import StageResult


def test_variant_assignment_is_stable_and_follows_shares():
    variants = {"A": 0.7, "B": 0.3}
    first = [assign_variant(f"user{i}", "salt", variants) for i in range(5000)]
    assert first == [assign_variant(f"user{i}", "salt", variants) for i in range(5000)]
    share_b = Counter(first)["B"] / len(first)
    assert 0.27 < share_b < 0.33
    # a different salt reshuffles users
    other = [assign_variant(f"user{i}", "other-salt", variants) for i in range(5000)]
    assert sum(a != b for a, b in zip(first, other)) > 1000


class _Logger:
    def __init__(self):
        self.records: list[ImpressionLog] = []

    def log(self, rec):
        self.records.append(rec)


def test_recommender_logs_the_served_slate():
    stage = lambda user, k, exclude: StageResult(items=[("a", 3.0), ("b", 2.0), ("c", 1.0)][:k])
    logger = _Logger()
    rec = Recommender(ServeConfig(), stage, logger)
    resp = asyncio.run(rec.recommend(RecommendRequest(user_id="u", k=2)))
    assert [i.item_id for i in resp.items] == ["a", "b"] and not resp.degraded
    assert set(resp.timings_ms) == {"candidates", "total"}
    [log] = logger.records
    assert log.request_id == resp.request_id and [s.item_id for s in log.slate] == ["a", "b"]


def test_failing_or_slow_stage_degrades_instead_of_raising():
    def broken(user, k, exclude):
        raise ConnectionError("redis down")

    def slow(user, k, exclude):
        time.sleep(0.5)
        return StageResult(items=[("a", 1.0)])

    for stage in (broken, slow):
        cfg = ServeConfig(deadlines={"candidates_timeout_ms": 50})
        resp = asyncio.run(Recommender(cfg, stage, None).recommend(RecommendRequest(user_id="u", k=2)))
        assert resp.degraded and resp.items == []


def test_impression_logger_never_blocks_and_counts_drops():
    class StuckProducer:
        def send(self, *a, **k):
            time.sleep(10)

    logger = ImpressionLogger("unused:1", "t", buffer_max=2, producer_factory=StuckProducer)
    rec = ImpressionLog(request_id="r", user_id="u", ts=1, variant="A", model_versions={}, timings_ms={}, slate=[])
    t0 = time.perf_counter()
    results = [logger.log(rec) for _ in range(10)]
    assert time.perf_counter() - t0 < 1.0  # correctness: log() returned without waiting on Kafka
    assert results.count(False) >= 7
