"""The ranker stage's batch entry point and the ranker deployment's batch handler: every request of
a batch answered as it would be alone, grouped by model version, a failing request alone failing."""

import asyncio

import numpy as np
import pytest
import torch

from scoring.servables import ModelCache, RankerServable
from services.stages import RankerStage, StageRequest
from tests.serving_fixtures import save_stage_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    save_stage_models(root, version="v1", seed=0)
    save_stage_models(root, version="v2", seed=1, ranker_overrides={"listwise": True})
    return root


@pytest.fixture(scope="module")
def stage(root):
    return RankerStage(ModelCache(RankerServable, str(root)))  # nothing preloaded: versions load on demand


def _requests(stage, n: int, seed: int = 0) -> list[StageRequest]:
    rng = np.random.default_rng(seed)
    c = stage.versions.get("ranker", "v1").model.config
    reqs = []
    for i in range(n):
        tables = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32) if i % 3 else None
        reqs.append(StageRequest(user_id=f"u{i}", history=[f"i{k}" for k in rng.integers(0, 300, 5 + 7 * i)],
                                 model="ranker", version="v1" if i % 2 else "v2", top_k=0,
                                 items=[f"i{k}" for k in rng.permutation(300)[:3 + 4 * i]], tables=tables))
    return reqs


def _assert_same(got, want):
    assert got.error is None and want.error is None
    assert got.version == want.version
    assert [i for i, _ in got.items] == [i for i, _ in want.items]
    np.testing.assert_allclose([s for _, s in got.items], [s for _, s in want.items], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5, rtol=0)


def test_a_batch_answers_each_request_as_alone_grouped_by_version(stage):
    reqs = _requests(stage, 7)
    results = stage.batch(reqs)
    assert len(results) == len(reqs)
    for req, res in zip(reqs, results):
        _assert_same(res, stage(req))
        assert res.version == req.version and sorted(i for i, _ in res.items) == sorted(req.items)
        scores = [s for _, s in res.items]
        assert scores == sorted(scores, reverse=True)  # best first, probabilities aligned with the items
    model = stage.versions.get("ranker", "v2")
    order, prob = model.score_heads(reqs[0].user_id, reqs[0].history, reqs[0].items, None, None, None)
    by_item = dict(zip(reqs[0].items, prob))
    assert results[0].probabilities == pytest.approx([by_item[i] for i, _ in results[0].items], abs=1e-6)


def test_a_failing_request_fails_alone(stage):
    reqs = _requests(stage, 5, seed=1)
    reqs[1].tables = np.zeros((2, 2, 2), np.float32)  # not this version's tables
    reqs.append(StageRequest(user_id="u9", history=[], model="ranker", version="no-such-version", top_k=0, items=["i1"]))
    results = stage.batch(reqs)
    assert results[1].error == "ValueError" and results[1].items == []
    assert results[-1].error is not None and results[-1].items == []
    for i in (0, 2, 3, 4):
        _assert_same(results[i], stage(reqs[i]))


def test_the_deployment_handler_batches_concurrent_requests(root, monkeypatch):
    from types import SimpleNamespace

    from ray import serve

    from services.app import RankerDeployment
    from services.config import ServeConfig

    # outside a replica: @serve.batch's queue only reads max_ongoing_requests from the replica context
    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=100))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)

    class Probe(RankerDeployment.func_or_class):
        # a batch queue of its own: starting the deployment class's queue here would leave it unpicklable
        # for the integration tests that deploy it later in the same process
        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
        async def __call__(self, reqs):
            return await self.score_batch(reqs)

    dep = Probe(ServeConfig(artifacts_dir=str(root), ranker_batch_wait_timeout_s=0.05).model_dump(mode="json", exclude={"variants"}))
    reqs = _requests(dep.stage, 6, seed=2)
    reqs[2].tables = np.zeros((1, 1, 1), np.float32)
    seen: list[int] = []
    batch = dep.stage.batch
    dep.stage.batch = lambda rs: seen.append(len(rs)) or batch(rs)

    async def main():
        return await asyncio.gather(*(dep(r) for r in reqs))

    results = asyncio.run(main())
    assert max(seen) > 1  # the handler received concurrent requests together
    assert results[2].error == "ValueError"
    for i in (0, 1, 3, 4, 5):
        _assert_same(results[i], dep.stage(reqs[i]))
