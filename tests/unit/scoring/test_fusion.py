"""Score fusion (scoring/fusion.py): the fused order equals its formula."""

import numpy as np
import pytest
from pydantic import ValidationError

from scoring.fusion import FusionConfig, fuse, fuse_with_stats, fused_order, manifest_fusion, zscore


def test_fused_order_equals_the_formula():
    rng = np.random.default_rng(0)
    scores = {"retrieval": rng.normal(5, 3, 50), "coarse": rng.normal(-2, 0.1, 50), "ranker": rng.normal(0, 1, 50)}
    cfg = FusionConfig(retrieval_weight=0.5, coarse_weight=0.25, ranker_weight=1.0)
    by_hand = sum(w * (x - x.mean()) / (x.std() + 1e-6)
                  for w, x in ((0.5, scores["retrieval"]), (0.25, scores["coarse"]), (1.0, scores["ranker"])))
    np.testing.assert_allclose(fuse(scores, cfg), by_hand, rtol=1e-10)
    assert fused_order(scores, cfg).tolist() == np.argsort(-by_hand, kind="stable").tolist()


def test_ranker_only_is_the_ranker_order_and_scale_does_not_matter():
    rng = np.random.default_rng(1)
    scores = {"retrieval": rng.normal(size=30), "coarse": rng.normal(size=30), "ranker": rng.normal(size=30)}
    assert fused_order(scores, FusionConfig()).tolist() == np.argsort(-scores["ranker"], kind="stable").tolist()
    a = FusionConfig(retrieval_weight=0.2, coarse_weight=0.4, ranker_weight=1.0)
    b = FusionConfig(retrieval_weight=1.0, coarse_weight=2.0, ranker_weight=5.0)
    assert fused_order(scores, a).tolist() == fused_order(scores, b).tolist()
    shifted = {k: 100 * v + 7 for k, v in scores.items()}  # z-scores are scale and shift free
    assert fused_order(shifted, a).tolist() == fused_order(scores, a).tolist()


def test_zscore_rows_and_masked_entries():
    x = np.array([[1.0, 2.0, 3.0, -np.inf], [5.0, 5.0, 5.0, 5.0]])
    z = zscore(x)
    np.testing.assert_allclose(z[0, :3], (x[0, :3] - 2.0) / (np.std(x[0, :3]) + 1e-6))
    assert z[0, 3] == -np.inf and (z[1] == 0).all()


def test_config_is_strict_and_errors_carry_values():
    with pytest.raises(ValidationError, match="extra"):
        FusionConfig(ranker_weight=1.0, hcn_weight=1.0)
    with pytest.raises(ValidationError, match=r"retrieval 0.0, coarse 0.0, ranker 0.0"):
        FusionConfig(ranker_weight=0.0)
    with pytest.raises(ValueError, match=r"\['coarse'\] have weights \[0.5\]"):
        fuse({"ranker": np.zeros(3)}, FusionConfig(coarse_weight=0.5))


def test_fuse_with_stats_is_fuse_on_the_head_of_the_candidates():
    """Given each stage's mean and std over all M candidates, the fused score of any subset (the
    logged support) is what `fuse` gave those items over the M: replay re-fuses exactly."""
    rng = np.random.default_rng(2)
    scores = {"retrieval": rng.normal(3, 2, 80), "coarse": rng.normal(-1, 0.3, 80), "ranker": rng.normal(0, 4, 80)}
    scores["coarse"][:5] = scores["coarse"][5]  # ties inside one stage change nothing
    cfg = FusionConfig(retrieval_weight=0.3, coarse_weight=0.7, ranker_weight=1.0)
    full = fuse(scores, cfg)
    support = fused_order(scores, cfg)[:15]  # (S,) what serving logs
    stats = {s: (float(x.mean()), float(x.std())) for s, x in scores.items()}
    part = fuse_with_stats({s: x[support] for s, x in scores.items()}, stats, cfg)
    np.testing.assert_allclose(part, full[support], rtol=1e-12)
    # the logged {stage: weight} form is the same weighting
    np.testing.assert_allclose(fuse_with_stats({s: x[support] for s, x in scores.items()}, stats, cfg.weights()),
                               part, rtol=0)
    # the support's own stats are another z-scoring: the scores change (the order of one stage's
    # z-scores would not, a blend's does in general)
    own = {s: (float(x[support].mean()), float(x[support].std())) for s, x in scores.items()}
    assert not np.allclose(fuse_with_stats({s: x[support] for s, x in scores.items()}, own, cfg), part)


def test_fuse_with_stats_errors_name_the_stages_and_values():
    x = {"ranker": np.zeros(3)}
    with pytest.raises(ValueError, match=r"\['coarse'\] have weights \[0.5\]"):
        fuse_with_stats(x, {"ranker": (0.0, 1.0)}, FusionConfig(coarse_weight=0.5))
    with pytest.raises(ValueError, match="unknown stages \\['fine'\\]"):
        fuse_with_stats(x, {"ranker": (0.0, 1.0)}, {"fine": 1.0})
    with pytest.raises(ValueError, match="all 0"):
        fuse_with_stats(x, {"ranker": (0.0, 1.0)}, {"ranker": 0.0})
    # a constant stage (std 0) contributes 0, as zscore does
    np.testing.assert_array_equal(fuse_with_stats({"ranker": np.full(3, 2.0)}, {"ranker": (2.0, 0.0)}, {"ranker": 1.0}),
                                  np.zeros(3))


def test_manifest_fusion_is_the_trained_choice_else_the_ranker_alone():
    assert manifest_fusion({"extra": {"fusion": {"coarse_weight": 0.5}}}) == FusionConfig(coarse_weight=0.5)
    assert manifest_fusion({"extra": {}}) == FusionConfig() == manifest_fusion({})
    with pytest.raises(ValidationError, match="extra"):
        manifest_fusion({"extra": {"fusion": {"hcn_weight": 1.0}}})
