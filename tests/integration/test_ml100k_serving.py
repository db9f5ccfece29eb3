"""No skew between offline and online, on MovieLens-100k and the real stack, for the cascade as
it is trained and served.

The training interactions of the first users stream through Kafka into the popularity and
feature-writer processors (Feast online + offline history) and a bse-encoder; the cascade
(two-tower, HCN on its out-of-fold candidates, listwise ranker, fusion weights chosen on
validation: pipelines/training/cascade.py, with short epoch caps, since the check is about the
inputs and the order reaching the answer, not about what the models learned) is trained on the
stream-joined splits and served over HTTP with the fusion its ranker artefact carries. Every test
user's top 20 from the live API must equal the same request path run offline on the dataset
histories and an in-memory BSE, and so must Recall@20 (the benchmark does the same with the
default settings on all 943 users and three seeds: reports/serving.md). The impressions the
answers logged must give back, replayed with the served variant, the served greedy order at
every slot."""

from __future__ import annotations

import time

import pytest

from benchmarks.serving import served_vs_offline
from demo.ml100k_world import Ml100kWorld, build_bse, cascade_splits, offline_inputs, stream_ml100k
from features.model_store import load_artifact
from pipelines.data.datasets import ml100k_test_cases
from pipelines.data.movielens import ml100k_events
from pipelines.training.cascade import PromotionRefused, config_from_overrides, save_cascade, train_cascade
from services.config import ServeConfig

pytestmark = pytest.mark.integration

N_USERS = 120
VERSION = "it"
# short epoch caps and a small fusion grid: about a minute and a half of training on one thread
TINY_CASCADE = ["two_tower_epochs=1", "oof_epochs=1", "hcn_epochs=1", "ranker_epochs=1", "ranker_positions_per_user=2",
                "fusion_grid=0,0.5,1"]


def test_live_api_top20_equals_the_offline_request_path(settings, ray_serve, tmp_path):
    from ray import serve

    from services.app import build_app

    s, tag = settings, settings.redis_prefix
    root = tmp_path / "artifacts"
    users = {str(u) for u in range(1, N_USERS + 1)}
    events = [e for e in ml100k_events(split="train_valid") if e.user_id in users]
    stream_ml100k(s, root, events=events, progress=lambda m: None)
    splits = cascade_splits(s)
    result = train_cascade(splits, config_from_overrides(TINY_CASCADE), seed=0)
    try:
        save_cascade(result, splits, VERSION, root)
    except PromotionRefused:
        pass  # saved and not marked latest: the versions are named below
    _, manifest = load_artifact("ranker", VERSION, root)
    assert manifest["extra"]["fusion"] == result.fusion.model_dump() and manifest["config"]["listwise"]
    build_bse(s, root, VERSION, progress=lambda m: None)

    cases = ml100k_test_cases()
    cases = cases[cases["user_id"].isin(users)].reset_index(drop=True)
    assert len(cases) == N_USERS and sum(len(h) for h in cases["history"]) == len(events)
    world = Ml100kWorld(root, {m: VERSION for m in ("two_tower", "hcn", "ranker")}, cases, {}, float("nan"))
    ref = lambda name: {"name": name, "version": VERSION}  # noqa: E731
    config = ServeConfig(artifacts_dir=str(root),
                         variants={"A": {"share": 1.0, "retrieval": ref("two_tower"), "coarse": ref("hcn"), "ranker": ref("ranker")}},
                         deadlines={"inputs_timeout_ms": 3000, "candidates_timeout_ms": 5000, "coarse_timeout_ms": 5000,
                                    "ranker_timeout_ms": 8000, "redis_timeout_ms": 1000})
    serve.run(build_app(s, config), name=tag, route_prefix=f"/{tag}")
    since = int(time.time() * 1000)
    try:
        res = served_vs_offline(f"{ray_serve}/{tag}", config, cases, offline_inputs(s, world))
    finally:
        serve.delete(tag)
    assert res["ml100k_identical_top_k_share"] >= 0.99, res
    assert abs(res["served_recall_at_20_ml100k"] - res["offline_recall_at_20_ml100k"]) <= 0.01, res
    assert res["ml100k_degraded_share"] == 0.0, res

    # replaying the served variant from its own log gives back what it served, slot for slot
    from pipelines.replay.data import read_kafka
    from pipelines.replay.policies import VariantPolicy
    from pipelines.replay.reproduce import served_order_reproduced

    deadline = time.monotonic() + 60
    imps = []
    while len(imps) < N_USERS and time.monotonic() < deadline:  # the impression logger sends asynchronously
        imps = read_kafka(s.kafka_bootstrap, s.impressions_topic, s.events_topic, since, None, window_s=1).impressions
        time.sleep(1)
    assert len(imps) == N_USERS and all(i.scores is not None and i.scores.cascade == "ranker" for i in imps)
    got = served_order_reproduced(imps, {"A": VariantPolicy.from_log("A", imps, "A")})
    assert got["share"] == 1.0 and got["n_greedy_slots"] == 20 * N_USERS, got
