import asyncio
import time
from collections import Counter

import numpy as np
import pytest
import torch

from recstream.events import ImpressionLog
from services.api import RecommendRequest, ScoreRequest
from scoring.config import ExplorationConfig
from services.config import ServeConfig
from services.impression_log import ImpressionLogger
from services.inputs import InMemoryInputs
from services.pipeline import _Trace, assign_variant
from services.runtime import local_recommender
from services.stages import StageResult
from tests.serving_fixtures import save_stage_models


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


class _Popular:
    def __init__(self, items, fail=False):
        self.items, self.fail = items, fail

    def popular(self, n):
        if self.fail:
            raise ConnectionError("redis down")
        return [(i, float(len(self.items) - k)) for k, i in enumerate(self.items[:n])]


HISTORIES = {"u1": [f"i{k}" for k in range(0, 60, 3)], "u2": ["i5", "i7"]}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    save_stage_models(root)
    return root


# Not the production deadlines (30-100 ms): on a shared 2-core machine a stage can miss those by
# chance, and these tests assert `not degraded`. A test of a deadline sets that one short.
TEST_DEADLINES = {"inputs_timeout_ms": 5000, "candidates_timeout_ms": 5000, "coarse_timeout_ms": 5000,
                  "ranker_timeout_ms": 10_000, "redis_timeout_ms": 1000}


def _rec(artifacts, inputs=None, popular=None, deadlines=None, **cfg):
    config = ServeConfig(artifacts_dir=str(artifacts), candidate_top_k=100, coarse_top_k=40, max_k=20,
                         popular_pool_size=100, history_len=50, popular_merge_k=5,
                         deadlines={**TEST_DEADLINES, **(deadlines or {})}, **cfg)
    inputs = inputs or InMemoryInputs(histories=dict(HISTORIES))
    logger = _Logger()
    return local_recommender(config, inputs, popular or _Popular([f"i{k}" for k in range(290, 300)] + ["new-item"]),
                             logger, seed=0), inputs, logger


def _run(rec, **kw):
    return asyncio.run(rec.recommend(RecommendRequest(**{"user_id": "u1", "k": 10, **kw})))


def test_every_stage_runs_reports_its_timing_and_version(artifacts):
    rec, _, logger = _rec(artifacts)
    resp = _run(rec, exclude=["i1", "i2"])
    assert not resp.degraded, resp.degraded_reasons
    assert set(resp.timings_ms) == {"inputs", "retrieval", "coarse", "ranker", "total"}
    assert resp.model_versions == {"retrieval": "v1", "coarse": "v1", "ranker": "v1"}
    ids = [i.item_id for i in resp.items]
    assert len(ids) == 10 == len(set(ids))
    assert not set(ids) & (set(HISTORIES["u1"]) | {"i1", "i2"})  # seen and excluded items never come back
    scores = [i.score for i in resp.items]
    assert scores == sorted(scores, reverse=True)  # the final (fused) score, best first
    assert all(0 < i.probability < 1 for i in resp.items)  # the ranker's click probability beside it
    [log] = logger.records
    assert log.request_id == resp.request_id and [s.item_id for s in log.slate] == ids
    assert all(s.propensity == 1.0 for s in log.slate) and log.policy == "deterministic"
    assert log.features["history_tail"] == HISTORIES["u1"] and log.features["long_term"] is True


def test_unknown_user_gets_a_cold_start_answer(artifacts):
    rec, _, _ = _rec(artifacts)
    resp = _run(rec, user_id="never-seen")
    assert len(resp.items) == 10 and not resp.degraded


def _fails(stage_name):
    def boom(req):
        raise RuntimeError(f"{stage_name} broken (test)")
    return boom


def test_retrieval_failure_falls_back_to_popular_items(artifacts):
    rec, _, _ = _rec(artifacts)
    rec.retrieval = _fails("retrieval")
    resp = _run(rec)
    assert "retrieval:error" in resp.degraded_reasons and resp.degraded
    assert {i.item_id for i in resp.items} <= {f"i{k}" for k in range(290, 300)} | {"new-item"}
    assert resp.timings_ms["ranker"] > 0  # the popular items were still ranked


def test_coarse_failure_keeps_retrieval_order_into_the_ranker(artifacts):
    rec, _, _ = _rec(artifacts)
    rec.coarse = _fails("coarse")
    resp = _run(rec)
    assert resp.degraded_reasons == ["coarse:error"] and len(resp.items) == 10


def test_ranker_failure_or_deadline_serves_coarse_order(artifacts):
    rec, _, _ = _rec(artifacts)
    expected = _run(rec)
    rec.ranker = _fails("ranker")
    broken = _run(rec)
    assert broken.degraded_reasons == ["ranker:error"]

    def slow(req):
        time.sleep(0.3)
        return StageResult(items=[])

    rec2, _, _ = _rec(artifacts, deadlines={"ranker_timeout_ms": 50})
    rec2.ranker = slow
    late = _run(rec2)
    assert late.degraded_reasons == ["ranker:deadline"]
    assert [i.item_id for i in late.items] == [i.item_id for i in broken.items]  # both: the coarse ranking
    assert [i.item_id for i in broken.items] != [i.item_id for i in expected.items]


def test_bse_without_the_version_runs_the_ranker_without_long_term_interest(artifacts):
    inputs = InMemoryInputs(histories=dict(HISTORIES), held_versions=set())
    rec, _, logger = _rec(artifacts, inputs=inputs)
    resp = _run(rec)
    assert resp.degraded_reasons == ["bse:version_missing"] and len(resp.items) == 10
    assert logger.records[0].features["long_term"] is False


def test_input_outages_degrade_with_reasons(artifacts):
    inputs = InMemoryInputs(histories=dict(HISTORIES))
    inputs.fail = {"history", "seen", "bse"}
    rec, _, _ = _rec(artifacts, inputs=inputs, popular=_Popular([], fail=True))
    resp = _run(rec)
    assert {"history:unavailable", "seen:unavailable", "bse:unavailable", "popular:unavailable"} <= set(resp.degraded_reasons)
    assert len(resp.items) == 10  # an answer all the same


def test_slow_input_source_misses_its_deadline_only(artifacts):
    inputs = InMemoryInputs(histories=dict(HISTORIES))
    inputs.delay_s = {"bse": 1.0}
    rec, _, _ = _rec(artifacts, inputs=inputs, deadlines={"inputs_timeout_ms": 300})
    resp = _run(rec)
    assert resp.degraded_reasons == ["bse:deadline"] and len(resp.items) == 10


def test_served_scores_equal_the_models_offline_scores(artifacts):
    """The ranker scores the server returns equal the model's forward pass on the same inputs."""
    from features.model_store import load_artifact, load_vocabs
    from models.sdim import sdim_interest_from_tables
    from models.sdim_hash import SdimHasher

    rng = np.random.default_rng(0)
    model, _ = load_artifact("ranker", "v1", artifacts)
    voc = load_vocabs("ranker", "v1", artifacts)
    c = model.config
    table = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32)
    inputs = InMemoryInputs(histories=dict(HISTORIES), tables={("u1", "v1"): table})
    rec, _, _ = _rec(artifacts, inputs=inputs)
    resp = _run(rec)
    items = [i.item_id for i in resp.items]
    rows = torch.as_tensor(voc["item"].encode(items))
    hist = torch.as_tensor(voc["item"].encode(HISTORIES["u1"][-c.short_len:]))
    hist = torch.cat([torch.zeros(c.short_len - len(hist), dtype=torch.long), hist])
    sigs = SdimHasher(c.sdim).signatures_np(model.item_embedding_table()[rows.numpy()])
    batch = {"user": torch.full((len(items),), voc["user"].index("u1")), "item": rows,
             "hist": hist.expand(len(items), -1), "long_interest": torch.as_tensor(sdim_interest_from_tables(table, sigs))}
    with torch.no_grad():
        offline = model(batch)["prob"].numpy()
    np.testing.assert_allclose([i.probability for i in resp.items], offline, atol=1e-4)


def test_score_endpoint_scores_given_items_including_unknown_ones(artifacts):
    rec, _, _ = _rec(artifacts)
    resp = asyncio.run(rec.score(ScoreRequest(user_id="u1", item_ids=["i3", "i9", "brand-new"])))
    assert set(resp.scores) == {"i3", "i9", "brand-new"} and all(0 < s < 1 for s in resp.scores.values())
    assert resp.model_version == "v1" and not resp.degraded


def test_exploration_logs_true_propensities_through_the_path(artifacts):
    variants = {"A": {"share": 1.0, "exploration": {"policy": "epsilon_slot", "epsilon": 0.5, "pool_size": 10}}}
    rec, _, logger = _rec(artifacts, variants=variants)
    for _ in range(20):
        _run(rec)
    props = {s.propensity for r in logger.records for s in r.slate}
    assert props == {0.5, 0.05} and all(r.policy == "epsilon_slot" for r in logger.records)


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


@pytest.fixture(scope="module")
def feature_artifacts(tmp_path_factory):
    from features.vectors import ITEM_VECTOR_NAMES, USER_VECTOR_NAMES

    root = tmp_path_factory.mktemp("feature-artifacts")
    feats = {"n_user_feats": len(USER_VECTOR_NAMES), "n_item_feats": len(ITEM_VECTOR_NAMES)}
    save_stage_models(root, ranker_overrides=feats, hcn_overrides=feats,
                      feature_vectors={"user_vector_names": list(USER_VECTOR_NAMES),
                                       "item_vector_names": list(ITEM_VECTOR_NAMES), "source": "test"})
    return root


def test_feature_models_get_vectors_from_the_sources_and_defaults_when_down(feature_artifacts):
    from features.item_features import ITEM_FEATURE_NAMES
    from features.vectors import USER_RAW_NAMES

    user_rows = {"u1": {n: 3.0 for n in USER_RAW_NAMES}}
    item_rows = {f"i{k}": np.full(len(ITEM_FEATURE_NAMES), 2.0, dtype=np.float32) for k in range(300)}
    inputs = InMemoryInputs(histories=dict(HISTORIES), user_rows=user_rows, item_rows=item_rows)
    rec, _, logger = _rec(feature_artifacts, inputs=inputs)
    ok = _run(rec)
    assert not ok.degraded, ok.degraded_reasons
    feats = logger.records[-1].features
    assert feats["user"][-1] == 0.0 and all(v[-1] == 0.0 for v in feats["items"].values())  # present: missing flag 0
    inputs.fail = {"user_features", "item_features"}
    down = _run(rec)
    assert set(down.degraded_reasons) == {"user_features:unavailable", "item_features:unavailable"}
    feats = logger.records[-1].features
    assert feats["user"][-1] == 1.0 and all(v[-1] == 1.0 for v in feats["items"].values())  # defaults, flagged missing
    assert len(down.items) == 10


def test_a_model_trained_on_another_feature_layout_is_refused_at_load(tmp_path):
    from features.vectors import ITEM_VECTOR_NAMES, USER_VECTOR_NAMES
    from scoring.config import ModelRef
    from scoring.errors import ModelLoadError
    from scoring.servables import RankerServable

    feats = {"n_user_feats": len(USER_VECTOR_NAMES), "n_item_feats": len(ITEM_VECTOR_NAMES)}
    renamed = ["old_" + n for n in USER_VECTOR_NAMES]
    save_stage_models(tmp_path, ranker_overrides=feats, hcn_overrides=feats,
                      feature_vectors={"user_vector_names": renamed, "item_vector_names": list(ITEM_VECTOR_NAMES)})
    with pytest.raises(ModelLoadError, match="trained on user vectors"):
        RankerServable(ModelRef(name="ranker", version="v1"), str(tmp_path))


def test_popular_items_serve_the_cached_pool_through_an_outage():
    import redis as redis_lib

    from services.inputs import PopularItems

    class FlakyRedis:
        down = False

        def zrevrange(self, key, start, end, withscores):
            if self.down:
                raise redis_lib.ConnectionError("down (test)")
            return [(b"i1", 5.0), (b"i2", 3.0)]

    r = FlakyRedis()
    never = PopularItems(r, refresh_s=0.0)
    r.down = True
    with pytest.raises(redis_lib.ConnectionError):
        never.popular(2)
    r.down = False
    items = PopularItems(r, refresh_s=0.0)
    assert items.popular(1) == [("i1", 5.0)]
    r.down = True
    assert items.popular(2) == [("i1", 5.0), ("i2", 3.0)]  # stale popularity beats none


def test_candidates_keep_room_for_popular_items_retrieval_missed(artifacts):
    """popular_merge_k slots go to popular items (here: one the two-tower has never seen) even when
    retrieval alone could fill all N; seen popular items are not merged."""
    popular = ["new-item", "i3", "i299", "i1"] + [f"i{k}" for k in range(290, 299)]  # i3: seen by u1
    rec, _, _ = _rec(artifacts, popular=_Popular(popular))
    c = rec.config
    cands, retrieved = asyncio.run(rec._candidates(_Trace(), "u1", HISTORIES["u1"], [], rec.variants["A"]))
    ids = [i for i, _ in cands]
    assert retrieved
    assert len(ids) == c.candidate_top_k == len(set(ids))
    assert "new-item" in ids[-c.popular_merge_k:]
    assert not set(ids) & set(HISTORIES["u1"])


def test_impression_carries_the_request_and_the_support_the_slate_was_drawn_from(artifacts):
    """What replay needs: the request to send again, and the ranked head exploration drew from,
    whose marginals reproduce every logged propensity."""
    from scoring.exploration import marginals

    variants = {"A": {"share": 1.0, "exploration": {"policy": "epsilon_slate", "epsilon": 0.5, "pool_size": 6}}}
    rec, _, logger = _rec(artifacts, variants=variants)
    for _ in range(10):
        _run(rec, k=4, exclude=["i7"], context={"page": "home"})
    for r in logger.records:
        assert r.request.k == 4 and r.request.exclude == ["i7"] and r.request.context == {"page": "home"}
        assert len(r.support) == 10 and r.exploration["policy"] == "epsilon_slate"
        m = marginals(r.support, 4, ExplorationConfig(**r.exploration))
        assert [s.propensity for s in r.slate] == pytest.approx([m[s.position][s.item_id] for s in r.slate])
        assert not r.features.get("items") or set(r.features["items"]) == set(r.support)


def test_a_replayed_request_serves_the_chosen_variant_and_is_not_logged(artifacts):
    variants = {"A": {"share": 1.0}, "B": {"share": 0.0}}
    rec, _, logger = _rec(artifacts, variants=variants)
    resp = asyncio.run(rec.recommend(RecommendRequest(user_id="u1", k=5), variant="B", log_impression=False))
    assert resp.variant == "B" and logger.records == []
    assert _run(rec).variant == "A" and len(logger.records) == 1


def _sample(name: str, **labels) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_impression_record_carries_what_was_served(artifacts):
    rec, _, logger = _rec(artifacts)
    before = int(time.time() * 1000)
    resp = _run(rec, user_id="u2", k=7)
    after = int(time.time() * 1000)
    [log] = logger.records
    assert (log.request_id, log.user_id, log.variant) == (resp.request_id, "u2", resp.variant)
    assert log.model_versions == resp.model_versions == {"retrieval": "v1", "coarse": "v1", "ranker": "v1"}
    assert log.timings_ms == resp.timings_ms and log.degraded is resp.degraded is False
    assert before <= log.ts <= after  # serving time, epoch ms
    assert [(s.item_id, s.position, s.score) for s in log.slate] == [(i.item_id, k, i.score) for k, i in enumerate(resp.items)]
    assert ImpressionLog.model_validate_json(log.to_bytes()) == log  # what goes to Kafka reads back the same


def test_stage_latency_and_degraded_reasons_are_counted(artifacts):
    stages = ("inputs", "retrieval", "coarse", "ranker", "total")
    latency = {s: _sample("recstream_stage_latency_seconds_count", stage=s) for s in stages}
    degraded = {r: _sample("recstream_degraded_total", stage="coarse", reason=r) for r in ("error", "deadline")}
    rec, _, _ = _rec(artifacts)
    _run(rec)
    rec.coarse = _fails("coarse")
    _run(rec)
    for s in stages:
        assert _sample("recstream_stage_latency_seconds_count", stage=s) - latency[s] == 2, s
    assert _sample("recstream_degraded_total", stage="coarse", reason="error") - degraded["error"] == 1
    assert _sample("recstream_degraded_total", stage="coarse", reason="deadline") == degraded["deadline"]


# ---- the final order: fusion, cascade prefixes, and what the log keeps of them ----------------

FUSED = {"retrieval_weight": 2.0, "coarse_weight": 0.5, "ranker_weight": 1.0}


def _stage_scores(rec, user="u1"):
    """Each stage's own scores of the coarse cut, straight from the stage objects."""
    from services.stages import StageRequest

    v = rec.variants["A"]
    hist = HISTORIES[user]
    cands, _ = asyncio.run(rec._candidates(_Trace(), user, hist, [], v))
    items = [i for i, _ in cands]
    coarse = rec.coarse(StageRequest(user, hist, "hcn", "v1", top_k=rec.config.coarse_top_k, items=items))
    cut = [i for i, _ in coarse.items]
    ranker = rec.ranker(StageRequest(user, hist, "ranker", "v1", top_k=len(cut), items=cut))
    return cut, {"retrieval": dict(cands), "coarse": dict(coarse.items), "ranker": dict(ranker.items)}


def test_the_final_order_is_the_fusion_formula_over_the_coarse_cut(artifacts):
    from scoring.fusion import FusionConfig, fuse

    rec, _, logger = _rec(artifacts, variants={"A": {"share": 1.0, "fusion": FUSED}})
    resp = _run(rec, k=20)
    cut, sc = _stage_scores(rec)
    fused = fuse({s: np.asarray([sc[s][i] for i in cut]) for s in sc}, FusionConfig(**FUSED))  # (M,)
    best = np.argsort(-fused, kind="stable")[:20]
    assert [i.item_id for i in resp.items] == [cut[j] for j in best]
    np.testing.assert_allclose([i.score for i in resp.items], fused[best], rtol=1e-9, atol=1e-9)
    log = logger.records[-1].scores
    assert log.cascade == "ranker" and log.fusion == {"retrieval": 2.0, "coarse": 0.5, "ranker": 1.0}
    # the log alone gives back the final score of every support item
    again = sum(w * (np.asarray(log.stages[s]) - log.stats[s][0]) / (log.stats[s][1] + 1e-6) for s, w in log.fusion.items())
    np.testing.assert_allclose(again, log.final, rtol=1e-9, atol=1e-9)
    assert log.final == sorted(log.final, reverse=True) and len(log.like) == len(log.final)


def test_a_ranker_artefact_brings_the_fusion_chosen_on_validation(artifacts):
    import json

    from features.model_store import artifact_path

    rec, _, _ = _rec(artifacts)
    assert rec.variants["A"].fusion.weights() == {"retrieval": 0.0, "coarse": 0.0, "ranker": 1.0}  # none recorded
    path = artifact_path("ranker", "v1", artifacts) / "manifest.json"
    manifest = json.loads(path.read_text())
    try:
        path.write_text(json.dumps({**manifest, "extra": {**(manifest.get("extra") or {}), "fusion": FUSED}}))
        rec, _, _ = _rec(artifacts)
        assert rec.variants["A"].fusion.weights() == {"retrieval": 2.0, "coarse": 0.5, "ranker": 1.0}
        own = {"A": {"share": 1.0, "fusion": {"coarse_weight": 1.0, "ranker_weight": 0.0}}}
        rec, _, _ = _rec(artifacts, variants=own)  # the variant's own weights win
        assert rec.variants["A"].fusion.weights() == {"retrieval": 0.0, "coarse": 1.0, "ranker": 0.0}
    finally:
        path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("cascade", ["retrieval", "coarse"])
def test_a_variant_serves_a_prefix_of_the_cascade(artifacts, cascade):
    rec, _, logger = _rec(artifacts, variants={"A": {"share": 1.0, "cascade": cascade}})
    resp = _run(rec, k=20)
    cut, sc = _stage_scores(rec)
    ran = {"retrieval": {"inputs", "retrieval", "total"}, "coarse": {"inputs", "retrieval", "coarse", "total"}}[cascade]
    assert set(resp.timings_ms) == ran and not resp.degraded
    own = sc[cascade]
    expect = sorted(own, key=lambda i: -own[i])[:20]
    assert [i.item_id for i in resp.items] == expect and all(i.probability is None for i in resp.items)
    log = logger.records[-1].scores
    assert log.cascade == cascade and log.fusion == {} and log.final == [own[i] for i in expect] and log.like is None


def test_a_failed_fused_stage_leaves_the_blend_and_a_failed_ranker_serves_the_coarse_order(artifacts):
    rec, _, logger = _rec(artifacts, variants={"A": {"share": 1.0, "fusion": FUSED}})
    rec.coarse = _fails("coarse")
    resp = _run(rec)
    assert resp.degraded_reasons == ["coarse:error"]
    assert logger.records[-1].scores.fusion == {"retrieval": 2.0, "ranker": 1.0}  # the blend without the coarse term
    rec, _, logger = _rec(artifacts, variants={"A": {"share": 1.0, "fusion": FUSED}})
    cut, _ = _stage_scores(rec)
    rec.ranker = _fails("ranker")
    resp = _run(rec, k=20)
    assert [i.item_id for i in resp.items] == cut[:20]
    assert logger.records[-1].scores.cascade == "coarse" and logger.records[-1].scores.fusion == {}


def test_a_shorter_cascade_logs_what_replaying_the_full_one_on_its_traffic_needs(artifacts):
    """The demo's A/B replays the full cascade on requests the two-tower -> HCN variant served: the
    log must carry every stage's stats over the coarse cut, so the blend can be rebuilt there."""
    from pipelines.replay.policies import RankerScorers, VariantPolicy
    from scoring.fusion import FusionConfig

    rec, _, logger = _rec(artifacts, variants={"A": {"share": 1.0, "cascade": "coarse"}})
    _run(rec, k=20)
    log = logger.records[-1]
    cut, sc = _stage_scores(rec)
    assert set(log.scores.stats) == {"retrieval", "coarse"}
    for s in ("retrieval", "coarse"):
        x = np.asarray([sc[s][i] for i in cut])
        np.testing.assert_allclose(log.scores.stats[s], [x.mean(), x.std()], rtol=1e-9)
    full = VariantPolicy("full", {"ranker": "v1"}, FusionConfig(**FUSED), "ranker", scorers=RankerScorers(str(artifacts)))
    ranking = full.ranking(log)
    assert ranking.path == "rescored" and sorted(ranking.items) == sorted(log.support)


def test_score_reads_the_long_term_tables_whatever_prefix_the_variant_serves(artifacts):
    from features.model_store import load_artifact

    model, _ = load_artifact("ranker", "v1", artifacts)
    c = model.config
    table = np.random.default_rng(0).standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32)
    got = {}
    for cascade in ("ranker", "coarse"):
        inputs = InMemoryInputs(histories=dict(HISTORIES), tables={("u1", "v1"): table})
        rec, _, _ = _rec(artifacts, inputs=inputs, variants={"A": {"share": 1.0, "cascade": cascade}})
        got[cascade] = asyncio.run(rec.score(ScoreRequest(user_id="u1", item_ids=["i3", "i9", "i12"]))).scores
    assert got["coarse"] == got["ranker"]
