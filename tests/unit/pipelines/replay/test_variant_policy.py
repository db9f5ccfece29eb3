"""Replaying a served variant (pipelines/replay/policies.py VariantPolicy) from what the impression
logged about its order, and the reproduction share (pipelines/replay/reproduce.py).

The logs here are built the way serving builds them (scoring.fusion over M candidates, the head
of the fused order as the support, scoring.exploration's slate), so that a replay which gives
back the served slate does so for the right reason."""

import numpy as np
import pytest

from pipelines.replay.policies import VariantPolicy, build_rows
from pipelines.replay.reproduce import greedy_slots, served_order_reproduced
from recstream.events import ImpressionLog, LoggedRequest, ServedScores, SlateItem
from scoring.config import ExplorationConfig, ModelRef
from scoring.exploration import make_slate
from scoring.fusion import STAGES, Z_EPS, FusionConfig, fuse

K, POOL, M = 5, 7, 60
VERSIONS = {"retrieval": "r1", "coarse": "c1", "ranker": "k1"}
FUSION = FusionConfig(retrieval_weight=0.8, coarse_weight=0.5, ranker_weight=1.0)
EXPLORE = ExplorationConfig(policy="epsilon_slate", epsilon=0.3, pool_size=POOL)


def _served(n: int, rng: np.random.Generator, fusion: FusionConfig | None = FUSION, variant: str = "A",
            exploration: ExplorationConfig = EXPLORE, versions: dict | None = None, cascade: str = "ranker"):
    """One request as serving logs it; returns (record, {stage: (M,) candidate scores}, candidate ids)."""
    cands = [f"i{j}" for j in rng.permutation(500)[:M]]
    # correlated stages on different scales, as a cascade's are
    base = rng.normal(size=M)
    x = {"retrieval": 5 + 3 * (base + rng.normal(size=M)), "coarse": -2 + 0.1 * (base + rng.normal(size=M)),
         "ranker": base + 0.7 * rng.normal(size=M)}
    if cascade != "ranker":
        x = {s: v for s, v in x.items() if STAGES.index(s) <= STAGES.index(cascade)}
    final = fuse(x, fusion) if fusion is not None else x[cascade]
    order = np.argsort(-final, kind="stable")  # (M,) serving's final order
    ranked = [(cands[j], float(final[j])) for j in order]
    top = order[: K + POOL]
    slate = make_slate(ranked, K, exploration, rng)
    scores = ServedScores(
        cascade=cascade, stages={s: v[top].tolist() for s, v in x.items()},
        stats={s: [float(v.mean()), float(v.std())] for s, v in x.items()} if fusion is not None else {},
        fusion=fusion.weights() if fusion is not None else {}, final=final[top].tolist(),
        like=(1 / (1 + np.exp(-x["ranker"][top]))).tolist() if "ranker" in x else None)
    rec = ImpressionLog(request_id=f"{variant}-r{n}", user_id=f"u{n % 7}", ts=1_750_000_000_000 + n, variant=variant,
                        model_versions=dict(versions or VERSIONS), timings_ms={}, policy=exploration.policy,
                        exploration=exploration.model_dump(), request=LoggedRequest(k=K),
                        support=[cands[j] for j in top], scores=scores,
                        slate=[SlateItem(item_id=s.item_id, position=p, score=s.score, propensity=s.propensity)
                               for p, s in enumerate(slate)])
    return rec, x, cands


def _log(n: int = 60, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    return [_served(j, rng, **kw) for j in range(n)]


class _Heads:
    """A ranker version whose order scores are given per request (what RankerScorer re-computes)."""

    def __init__(self, order: dict[str, dict[str, float]], version: str, fusion: FusionConfig = FusionConfig()):
        self.order, self.version, self.fusion, self.calls = order, version, fusion, 0

    def heads(self, imp):
        self.calls += 1
        o = self.order[imp.request_id]
        return o, {i: 1 / (1 + np.exp(-v)) for i, v in o.items()}

    def scores(self, imp):
        return self.heads(imp)[1]


class _Pool:
    def __init__(self, **by_version):
        self.by_version, self.asked = by_version, []

    def get(self, ref: ModelRef):
        self.asked.append((ref.name, ref.version))
        return self.by_version[ref.version]


def test_the_served_variant_gives_back_its_greedy_slate_at_every_slot():
    log = _log()
    imps = [r for r, _, _ in log]
    served = VariantPolicy("A as served", VERSIONS, FUSION)
    got = served_order_reproduced(imps, {"A": served})
    assert got["share"] == 1.0 and got["paths"] == {"logged": len(imps)}
    # epsilon_slate explores some slates: only the slots that show the greedy item count, and
    # the exploring ones that do not are left out (so the check is not trivially all slots)
    n_slots = sum(len(r.slate) for r in imps)
    assert 0 < got["n_greedy_slots"] < n_slots
    # the same from the log alone (versions, cascade and fusion as the variant served them)
    from_log = VariantPolicy.from_log("A", imps, "A")
    assert from_log.fusion == FUSION and {s: r.version for s, r in from_log.versions.items()} == VERSIONS
    assert served_order_reproduced(imps, {"A": from_log})["share"] == 1.0
    # re-fusing the logged stage scores with the logged stats instead of reading `final`: exact too
    refit = VariantPolicy("A re-fused", VERSIONS, FUSION, path="fusion")
    got = served_order_reproduced(imps, {"A": refit})
    assert got["share"] == 1.0 and got["paths"] == {"fused": len(imps)}
    # the fusion is not decoration: the ranker alone does not give back the served slate
    ranker_only = served_order_reproduced(imps, {"A": VariantPolicy("ranker only", VERSIONS, FusionConfig())})
    assert ranker_only["share"] < 0.9 and ranker_only["paths"] == {"fused": len(imps)}


def test_the_served_variant_evaluates_as_the_logging_policy_on_its_greedy_slots():
    """Deterministic logging and the served variant replayed deterministically: every weight is 1."""
    imps = [r for r, _, _ in _log(30, exploration=ExplorationConfig())]
    built = build_rows(imps, {}, VariantPolicy("A", VERSIONS, FUSION))
    assert np.array_equal(built.rows.target_pscore, built.rows.pscore) and built.unsupported_mass == 0.0


def test_refusion_equals_the_formula_over_the_served_candidates():
    other = FusionConfig(retrieval_weight=0.1, coarse_weight=2.0, ranker_weight=0.3)
    pol = VariantPolicy("A, other fusion", VERSIONS, other)
    for rec, x, cands in _log(20, seed=3):
        # by hand over all M candidates, as a server with the other fusion would have scored them
        z = sum(w * (x[s] - x[s].mean()) / (x[s].std() + Z_EPS) for s, w in other.weights().items())
        by_id = dict(zip(cands, z))
        want = sorted(rec.support, key=lambda i: -by_id[i])
        r = pol.ranking(rec)
        assert r.path == "fused" and r.items == want


def test_another_fusion_or_cascade_changes_the_order_where_it_should():
    log = _log(40, seed=5)
    coarse_only = VariantPolicy("coarse weight only", VERSIONS, FusionConfig(ranker_weight=0.0, coarse_weight=1.0))
    coarse_cascade = VariantPolicy("coarse cascade", VERSIONS, cascade="coarse")
    changed = 0
    for rec, x, cands in log:
        coarse = dict(zip(rec.support, rec.scores.stages["coarse"]))
        want = sorted(rec.support, key=lambda i: -coarse[i])
        assert coarse_only.ranking(rec).items == want == coarse_cascade.ranking(rec).items
        changed += want[:K] != rec.support[:K]
    assert changed > len(log) // 2  # HCN alone puts another slate on top in most requests
    # weights proportional to the served ones are the served order, though not the logged path
    scaled = VariantPolicy("scaled", VERSIONS, FusionConfig(retrieval_weight=1.6, coarse_weight=1.0, ranker_weight=2.0))
    assert all(scaled.ranking(r).items == r.support and scaled.ranking(r).path == "fused" for r, _, _ in log)


def test_another_ranker_version_is_rescored_and_the_others_kept():
    log = _log(25, seed=7)
    imps = [r for r, _, _ in log]
    # the served version's order scores re-computed exactly (as if the inputs were rebuilt
    # without loss): the std estimate makes the re-scored fusion the served one exactly
    same = {r.request_id: dict(zip(r.support, r.scores.stages["ranker"])) for r in imps}
    pool = _Pool(k1=_Heads(same, "k1"))
    forced = VariantPolicy("A, ranker re-scored", VERSIONS, FUSION, scorers=pool, path="rescore")
    got = served_order_reproduced(imps, {"A": forced})
    assert got["share"] == 1.0 and got["paths"] == {"rescored": len(imps)} and pool.asked[0] == ("ranker", "k1")
    # another version: its scores enter the fusion, the logged retrieval and coarse scores stay
    rng = np.random.default_rng(0)
    new = {r.request_id: {i: float(rng.normal()) for i in r.support} for r in imps}
    pol = VariantPolicy("B ranker", {"ranker": "k2"}, FUSION, scorers=_Pool(k2=_Heads(new, "k2")))
    for rec in imps:
        sc = rec.scores
        xr = np.array([new[rec.request_id][i] for i in rec.support])
        served_r = np.array(sc.stages["ranker"])
        std_r = xr.std() * sc.stats["ranker"][1] / served_r.std()
        fused = sum(w * (np.array(sc.stages[s]) - sc.stats[s][0]) / (sc.stats[s][1] + Z_EPS)
                    for s, w in (("retrieval", 0.8), ("coarse", 0.5))) + (xr - xr.mean()) / (std_r + Z_EPS)
        r = pol.ranking(rec)
        assert r.path == "rescored" and r.items == [rec.support[j] for j in np.argsort(-fused, kind="stable")]
    assert served_order_reproduced(imps, {"A": pol})["share"] < 0.9
    # a server that saw more history than the log's tail: the re-computation says so
    cut = imps[0].model_copy(update={"request_id": "cut", "features": {"history_tail": ["i1"] * 50, "history_len": 80}})
    new["cut"] = new[imps[0].request_id]
    assert pol.ranking(cut).notes == ("history_cut",) and pol.ranking(imps[0]).notes == ()


def test_an_old_record_without_scores_falls_back_to_rescoring_and_is_counted():
    log = _log(10, seed=9)
    imps = [r for r, _, _ in log]
    old = [r.model_copy(update={"scores": None}) for r in imps[:4]]
    mixed = old + imps[4:]
    # the re-scored ranker's click probabilities order the old records (RankerPolicy's way)
    rng = np.random.default_rng(1)
    heads = _Heads({r.request_id: {i: float(rng.normal()) for i in r.support} for r in old}, "k1")
    pol = VariantPolicy("A", VERSIONS, FUSION, scorers=_Pool(k1=heads))
    for r in old:
        like = heads.scores(r)
        assert pol.ranking(r).items == sorted(r.support, key=lambda i: -like[i])
        assert pol.ranking(r).path == "no_scores"
    assert pol.paths(mixed) == {"no_scores": 4, "logged": 6}
    got = served_order_reproduced(mixed, {"A": pol})
    assert got["paths"] == {"no_scores": 4, "logged": 6} and got["n_requests"] == 10
    # without ranker artefacts an old record cannot be replayed, and the error says which and why
    with pytest.raises(ValueError, match=r"impression A-r0 with ranker/k1 \(it logged no scores\)"):
        VariantPolicy("A", VERSIONS, FUSION).ranking(old[0])


def test_a_retrieval_or_coarse_version_replay_cannot_rescore_is_a_noted_proxy():
    imps = [r for r, _, _ in _log(8, seed=11)]
    pol = VariantPolicy("new HCN", {"coarse": "c2"}, FUSION)
    assert pol.paths(imps) == {"fused": 8, "proxy:coarse": 8}
    assert all(pol.ranking(r).items == r.support for r in imps)  # same scores, same fusion: the served order


def test_a_stage_that_did_not_run_is_left_out_and_noted():
    rec, _, _ = _served(0, np.random.default_rng(2))
    sc = rec.scores
    degraded = rec.model_copy(update={"scores": sc.model_copy(update={
        "stages": {s: v for s, v in sc.stages.items() if s != "retrieval"},
        "stats": {s: v for s, v in sc.stats.items() if s != "retrieval"},
        "fusion": {"coarse": 0.5, "ranker": 1.0}})})
    r = VariantPolicy("A", VERSIONS, FUSION).ranking(degraded)
    assert r.path == "fused" and r.notes == ("missing:retrieval",)
    z = {s: (np.array(sc.stages[s]) - sc.stats[s][0]) / (sc.stats[s][1] + Z_EPS) for s in ("coarse", "ranker")}
    fused = 0.5 * z["coarse"] + z["ranker"]
    assert r.items == [rec.support[j] for j in np.argsort(-fused, kind="stable")]


def test_greedy_slots_follow_the_logging_policy():
    rec, _, _ = _served(0, np.random.default_rng(4), exploration=ExplorationConfig(policy="epsilon_slot", epsilon=0.5,
                                                                                       pool_size=POOL))
    want = [s.position for s in rec.slate if s.item_id == rec.support[s.position]]
    assert greedy_slots(rec) == want
    # an epsilon_slot slot shows the greedy item at (1 - epsilon) and a pool item otherwise
    assert all(s.propensity == pytest.approx(0.5) for s in rec.slate if s.position in want)
    assert all(s.propensity == pytest.approx(0.5 / POOL) for s in rec.slate if s.position not in want)
    det, _, _ = _served(1, np.random.default_rng(4), exploration=ExplorationConfig())
    assert greedy_slots(det) == list(range(K))
    assert greedy_slots(rec.model_copy(update={"support": None})) is None


def test_the_greedy_rule_counts_every_epsilon_slate_slot_that_shows_its_greedy_item():
    # with epsilon 1 every slate is a random draw; a draw that keeps support[p] at p is greedy there
    imps = [r for r, _, _ in _log(200, seed=13, exploration=ExplorationConfig(policy="epsilon_slate", epsilon=0.99,
                                                                                pool_size=POOL))]
    got = served_order_reproduced(imps, {"A": VariantPolicy("A", VERSIONS, FUSION)})
    n_slots = sum(len(r.slate) for r in imps)
    # P(greedy at a slot) = (1 - e) + e / (K + POOL)
    assert got["n_greedy_slots"] / n_slots == pytest.approx(0.01 + 0.99 / (K + POOL), abs=0.04)
    assert got["share"] == 1.0


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"fusion orders the ranker cascade only \(cascade 'coarse'"):
        VariantPolicy("x", fusion=FUSION, cascade="coarse")
    with pytest.raises(ValueError, match="unknown stage 'fine'"):
        VariantPolicy("x", {"fine": "v1"})
    with pytest.raises(ValueError, match="ranker version 'latest'"):
        VariantPolicy("x", {"ranker": ModelRef(name="ranker")})
    imps = [r for r, _, _ in _log(3)]
    with pytest.raises(ValueError, match=r"variant 'B' served none of the 3 .*\['A'\]"):
        VariantPolicy.from_log("B", imps, "B")
    bad = imps[0].model_copy(update={"scores": imps[0].scores.model_copy(update={"final": [1.0]})})
    with pytest.raises(ValueError, match="not aligned with its 12 support items"):
        VariantPolicy("x").ranking(bad)


def test_from_log_takes_the_variants_own_settings_and_overrides():
    a = [r for r, _, _ in _log(6, seed=1)]
    b = [r for r, _, _ in _log(6, seed=2, variant="B", fusion=None, cascade="coarse",
                               versions={"retrieval": "r1", "coarse": "c2", "ranker": "k1"})]
    pol_b = VariantPolicy.from_log("B", a + b, "B")
    assert pol_b.cascade == "coarse" and pol_b.fusion is None and pol_b.versions["coarse"].version == "c2"
    assert served_order_reproduced(a + b, {"B": pol_b})["share"] == 1.0
    # B's versions and cascade on A's traffic: A's requests re-ordered by their logged HCN scores
    # (a proxy: B's HCN version c2 did not score them)
    assert pol_b.paths(a) == {"fused": 6, "proxy:coarse": 6}
    pol = VariantPolicy.from_log("A, ranker k2", a, "A", versions={"ranker": "k2"})
    assert pol.versions["ranker"].version == "k2" and pol.fusion == FUSION


def test_another_ranker_without_a_fusion_of_its_own_serves_its_artefacts_fusion():
    imps = [r for r, _, _ in _log(10, seed=15)]
    rng = np.random.default_rng(3)
    new = {r.request_id: {i: float(rng.normal()) for i in r.support} for r in imps}
    # k2 was trained with a fusion that weighs HCN only: its manifest's, not the logged one, orders
    hcn = _Pool(k2=_Heads(new, "k2", FusionConfig(coarse_weight=1.0, ranker_weight=0.0)))
    pol = VariantPolicy("k2 as trained", {"ranker": "k2"}, scorers=hcn)
    for r in imps:
        coarse = dict(zip(r.support, r.scores.stages["coarse"]))
        assert pol.ranking(r) == pol.ranking(r) and pol.ranking(r).items == sorted(r.support, key=lambda i: -coarse[i])
    # k2 trained to order alone: its re-computed order scores, nothing else
    alone = VariantPolicy("k2 alone", {"ranker": "k2"}, scorers=_Pool(k2=_Heads(new, "k2")))
    for r in imps:
        assert alone.ranking(r).items == sorted(r.support, key=lambda i: -new[r.request_id][i])
        assert alone.ranking(r).path == "rescored"
    # the served ranker without a fusion given: the logged one (the served slate)
    assert VariantPolicy("as served", {"ranker": "k1"}).paths(imps) == {"logged": 10}
