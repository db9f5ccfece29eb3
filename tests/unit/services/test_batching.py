"""services/batching.py: the ingress's own ranker batcher."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.api import RecommendRequest
from services.batching import LocalBatcher
from tests.unit.services.test_pipeline import _rec, artifacts  # noqa: F401  (module fixture)


class _SlowStage:
    """batch() doubles each request after a pause, recording the batch sizes it saw."""

    def __init__(self, pause_s: float = 0.05):
        self.pause_s, self.sizes, self.lock = pause_s, [], threading.Lock()

    def batch(self, reqs):
        with self.lock:
            self.sizes.append(len(reqs))
        time.sleep(self.pause_s)
        return [2 * r for r in reqs]


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer():
    stage = _SlowStage()
    batcher = LocalBatcher(stage, max_batch_size=4)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(10)))

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert stage.sizes == [4, 4, 2]  # queued while the loop was busy: full batches, at most 4


def test_a_request_whose_caller_gave_up_is_dropped_before_its_batch():
    stage = _SlowStage(pause_s=0.1)
    batcher = LocalBatcher(stage, max_batch_size=8)

    async def main():
        first = asyncio.create_task(batcher(1))
        await asyncio.sleep(0.01)  # the first batch is running: the next two wait
        gone = asyncio.create_task(asyncio.wait_for(batcher(2), 0.02))
        kept = asyncio.create_task(batcher(3))
        with pytest.raises(asyncio.TimeoutError):
            await gone
        return await first, await kept

    assert asyncio.run(main()) == (2, 6)
    assert stage.sizes == [1, 1]  # request 2 never reached the stage


def test_wait_timeout_lets_a_lone_request_wait_for_company():
    stage = _SlowStage(pause_s=0.0)
    batcher = LocalBatcher(stage, max_batch_size=3, wait_timeout_s=0.2)

    async def main():
        a = asyncio.create_task(batcher(1))
        await asyncio.sleep(0.02)
        return await asyncio.gather(a, batcher(2), batcher(3))

    assert asyncio.run(main()) == [2, 4, 6] and stage.sizes == [3]
    with pytest.raises(ValueError, match="max_batch_size"):
        LocalBatcher(stage, max_batch_size=0)


def test_ranker_in_the_ingress_answers_as_without_batching(artifacts):  # noqa: F811
    """The real ranker stage behind the batcher, many concurrent requests: every answer (items, order,
    scores) equals the one the same request gets alone through the unbatched stage."""
    plain, _, _ = _rec(artifacts)
    batched, _, _ = _rec(artifacts)
    batched.ranker = LocalBatcher(batched.ranker, max_batch_size=8)
    users = ["u1", "u2", "nobody", "u1", "u2", "u3"]  # with and without history, repeated

    async def concurrently():
        return await asyncio.gather(*(batched.recommend(RecommendRequest(user_id=u, k=10)) for u in users))

    together = asyncio.run(concurrently())
    for u, got in zip(users, together):
        alone = asyncio.run(plain.recommend(RecommendRequest(user_id=u, k=10)))
        assert not got.degraded and [i.item_id for i in got.items] == [i.item_id for i in alone.items]
        assert [i.score for i in got.items] == pytest.approx([i.score for i in alone.items], abs=1e-5)
        assert [i.probability for i in got.items] == pytest.approx([i.probability for i in alone.items], abs=1e-5)
