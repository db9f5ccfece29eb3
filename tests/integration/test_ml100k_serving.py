"""No skew between offline and online, on MovieLens-100k and the real stack.

The training interactions of the first users stream through Kafka into the popularity and
feature-writer processors (Feast online + offline history) and a bse-encoder; the three stage
models (ML-100k vocabularies, the stream's feature inputs, randomly initialised: the check is
about the inputs reaching the models, not about what they learned) serve over HTTP. Every test
user's top 20 from the live API must equal the same request path run offline on the dataset
histories, the Feast offline join and an in-memory BSE, and so must Recall@20 (the benchmark
does the same with trained models on all 943 users: reports/serving.md)."""

from __future__ import annotations

import pytest
import torch

from features.model_store import save_artifact
from features.vectors import ITEM_VECTOR_NAMES, USER_VECTOR_NAMES
from models import build_model
from demo.ml100k_world import Ml100kWorld, build_bse, offline_inputs, stream_ml100k
from pipelines.data.datasets import build_ml100k_retrieval, ml100k_test_cases
from pipelines.data.movielens import ml100k_events
from benchmarks.serving import served_vs_offline
from services.config import ServeConfig

pytestmark = pytest.mark.integration

N_USERS = 120
VERSION = "it"


def _save_models(root) -> None:
    splits = build_ml100k_retrieval(200)
    dims = splits.model_dims()
    feats = {"n_user_feats": len(USER_VECTOR_NAMES), "n_item_feats": len(ITEM_VECTOR_NAMES)}
    fv = {"user_vector_names": list(USER_VECTOR_NAMES), "item_vector_names": list(ITEM_VECTOR_NAMES), "source": "test"}
    torch.manual_seed(0)
    for name, cfg, uses in (("two_tower", {}, False), ("hcn", {"long_len": 50, "short_len": 10, "n_iters": 2, **feats}, True),
                            ("ranker", {"long_len": 200, **feats}, True)):
        model = build_model(name, {**dims, **cfg})
        model.set_item_categories(torch.as_tensor(splits.item_cat))
        save_artifact(name, VERSION, model.eval(), model.config, splits.vocabs, {}, splits.data_window, root=root,
                      feature_vectors=fv if uses else None)


def test_live_api_top20_equals_the_offline_request_path(settings, ray_serve, tmp_path):
    from ray import serve

    from services.app import build_app

    s, tag = settings, settings.redis_prefix
    root = tmp_path / "artifacts"
    _save_models(root)
    users = {str(u) for u in range(1, N_USERS + 1)}
    events = [e for e in ml100k_events(split="train_valid") if e.user_id in users]
    stream_ml100k(s, root, events=events, progress=lambda m: None)
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
    try:
        res = served_vs_offline(f"{ray_serve}/{tag}", config, cases, offline_inputs(s, world))
    finally:
        serve.delete(tag)
    assert res["ml100k_identical_top_k_share"] >= 0.99, res
    assert abs(res["served_recall_at_20_ml100k"] - res["offline_recall_at_20_ml100k"]) <= 0.01, res
    assert res["ml100k_degraded_share"] == 0.0, res
