"""The cascade trained for its place (pipelines/training/cascade.py) on a tiny synthetic split:

- the windows each stage trains with are the ones the servables read, and the ranker's SDIM block
  sees the whole history at training as the BSE tables do at serving (served scores = trained scores);
- the promotion guard refuses a cascade whose later stage lowers validation Recall@k and names the
  stage, saves its versions without marking them latest, and promotes a cascade that earns it;
- HCN's distillation term is a KL divergence: zero when HCN already orders as the teacher;
- metrics over a candidate set count a positive the set lost as a miss; the ranker's positions are
  each user's last ones.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from features.model_store import latest_version, list_versions, promoted_version
from models.sdim import build_bucket_tables
from models.sdim_hash import SdimHasher
from pipelines.data.datasets import Samples, SequenceStore, build_synthetic_retrieval
from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.cascade import (
    CascadeConfig,
    CascadeModels,
    PromotionRefused,
    check_promotion,
    config_from_overrides,
    evaluate_cascade,
    last_positions,
    longest_history,
    ranker_scores,
    save_cascade,
    score_sets_catalogue,
    set_metrics,
    top_by,
    train_cascade,
)
from scoring.config import ModelRef
from scoring.fusion import FusionConfig
from scoring.servables import CoarseServable, RankerServable, RetrievalServable

torch.set_num_threads(1)

SAMPLE_HIST_LEN = 16  # shorter than every stage's window: the cascade must lift it, not train on 16
CFG = CascadeConfig(retrieval_top_n=60, coarse_top_n=30, k=10, two_tower_epochs=1, oof_epochs=1, hcn_epochs=1,
                    ranker_epochs=1, hcn_hard=8, ranker_hard=6, ranker_random=2, ranker_positions_per_user=4,
                    distill_epochs=1, fusion_grid=(0.0, 1.0))


@pytest.fixture(scope="module")
def splits():
    return build_synthetic_retrieval(SyntheticConfig(n_users=40, n_items=100, n_categories=8, seq_len=40, short_len=10,
                                                     n_impressions=2), hist_len=SAMPLE_HIST_LEN)


@pytest.fixture(scope="module")
def result(splits):
    return train_cascade(splits, CFG, seed=0)


def test_result_carries_every_prefix_and_the_windows(result, splits):
    for prefix in ("two_tower_only", "two_tower_hcn", "two_tower_ranker", "ranker_alone", "cascade"):
        assert 0.0 <= result.valid[f"{prefix}_recall_at_10"] <= 1.0
    assert {"retrieval_recall_at_60", "coarse_recall_at_30"} <= set(result.valid)
    assert result.models.ranker.config.listwise
    assert result.windows["ranker"]["long_len"] == longest_history(splits) > SAMPLE_HIST_LEN
    assert result.diagnostics["distill_kept"] in (0.0, 1.0)
    test = evaluate_cascade(result, None, splits, "test")
    assert set(test) == set(result.valid)


def test_windows_trained_equal_windows_served(result, splits, tmp_path):
    """Save, load the three servables, and score validation users both ways: the served scores
    (last hist_len / long_len / short_len of the history, SDIM from BSE tables over ALL of it) equal
    what the training code computes for the same positions."""
    paths = save_cascade(result, splits, "v1", tmp_path, promote=False)
    for name, path in paths.items():
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["extra"]["windows"] == result.windows[name]
    root = str(tmp_path)
    ret = RetrievalServable(ModelRef(name="two_tower", version="v1"), root)
    coarse = CoarseServable(ModelRef(name="hcn", version="v1"), root)
    rk = RankerServable(ModelRef(name="ranker", version="v1"), root)
    w = result.windows
    assert ret.hist_len == w["two_tower"]["hist_len"] and coarse.model.config.long_len == w["hcn"]["long_len"]
    assert rk.model.config.short_len == w["ranker"]["short_len"] and rk.long_term == "sdim"

    items, users = splits.vocabs["item"], splits.vocabs["user"]
    valid = splits.valid
    hasher = SdimHasher(rk.model.config.sdim)
    for i in range(0, len(valid), 7):
        sample = valid.subset(np.array([i]))
        hist_rows = valid.store.history(valid.user[i], valid.end[i])  # every behaviour before the position
        assert len(hist_rows) > SAMPLE_HIST_LEN
        hist = [items.tokens[r - 1] for r in hist_rows]
        user = users.tokens[valid.user[i] - 1]
        cand_rows = np.arange(1, 31)
        cand_ids = [items.tokens[r - 1] for r in cand_rows]
        # retrieval: the served top-N scores are the training scores (cosine / temperature)
        top_ids, top_scores = ret.top_n(ret.user_vector(user, hist), 20)
        trained = score_sets_catalogue(result.models.two_tower, _hist(sample, 50), items.encode(list(top_ids))[None, :])[0]
        np.testing.assert_allclose(top_scores, trained, rtol=1e-4, atol=1e-4)
        # coarse
        served = coarse.score(user, hist, cand_ids, None, None)
        trained = score_sets_catalogue(result.models.hcn, _hist(sample, 50), cand_rows[None, :])[0]
        np.testing.assert_allclose(served, trained, rtol=1e-4, atol=1e-4)
        # ranker: BSE tables over the whole history at serving, the full window at training
        tables, _ = build_bucket_tables(rk.item_table[hist_rows], hasher)
        order, _ = rk.score_heads(user, hist, cand_ids, tables, None, None)
        trained = ranker_scores(result.models.ranker, _hist(sample, w["ranker"]["long_len"]), cand_rows[None, :])[0]
        np.testing.assert_allclose(order, trained, rtol=1e-4, atol=1e-4)


def _hist(samples, n):
    return dataclasses.replace(samples, hist_len=n)


class _OracleRanker(nn.Module):
    """A stand-in ranker that knows the held-out item: sign=+1 puts it first (a better stage),
    sign=-1 last (a broken one)."""

    def __init__(self, sign: float, long_len: int):
        super().__init__()
        self.sign, self.config = sign, SimpleNamespace(long_len=long_len)

    def forward(self, batch):
        return {"score": self.sign * (batch["cands"] == batch["item"][:, None]).float()}


def test_guard_refuses_a_worse_ranker_and_accepts_a_better_one(result, splits, tmp_path):
    only_ranker = FusionConfig(retrieval_weight=0.0, coarse_weight=0.0, ranker_weight=1.0)
    m = result.models
    long_len = m.ranker.config.long_len
    worse = evaluate_cascade(CascadeModels(m.two_tower, m.hcn, _OracleRanker(-1.0, long_len)), only_ranker, splits,
                             "valid", CFG)
    better = evaluate_cascade(CascadeModels(m.two_tower, m.hcn, _OracleRanker(1.0, long_len)), only_ranker, splits,
                              "valid", CFG)
    assert worse["cascade_recall_at_10"] < worse["two_tower_hcn_recall_at_10"]  # the broken stage is worse
    reasons = check_promotion(worse, 10, "v2")
    assert reasons and reasons[0].startswith("ranker v2 lowers validation Recall@10 of the cascade from "
                                             f"{worse['two_tower_hcn_recall_at_10']:.4f} to {worse['cascade_recall_at_10']:.4f}")
    assert better["cascade_recall_at_10"] == pytest.approx(better["coarse_recall_at_30"])
    assert check_promotion(better, 10, "v3") == []

    # save_cascade: a refused cascade is saved but not promoted; an accepted one becomes latest
    accepted = dataclasses.replace(result, valid=better)
    save_cascade(accepted, splits, "v1", tmp_path)
    assert all(promoted_version(n, tmp_path) == "v1" for n in ("two_tower", "hcn", "ranker"))
    with pytest.raises(PromotionRefused, match="ranker v2 lowers"):
        save_cascade(dataclasses.replace(result, valid=worse), splits, "v2", tmp_path)
    for name in ("two_tower", "hcn", "ranker"):
        assert list_versions(name, tmp_path) == ["v1", "v2"] and latest_version(name, tmp_path) == "v1"
    fusion = json.loads((tmp_path / "models" / "ranker" / "v1" / "manifest.json").read_text())["extra"]["fusion"]
    assert FusionConfig(**fusion) == result.fusion


def test_distillation_term_is_zero_when_hcn_orders_as_the_teacher(result, splits):
    from pipelines.training.cascade_data import build_candidate_sets

    hcn = result.models.hcn
    hcn.train()
    sets = build_candidate_sets(splits.train.subset(np.arange(8)), np.tile(np.arange(1, 61), (8, 1)), 5, 0,
                                splits.catalogue, 0)
    batch = sets.batch(np.arange(8))
    with torch.no_grad():
        student = hcn.score_sets(hcn.interests(batch)[0], batch["cands"])  # (B, C)
        same = hcn({**batch, "cand_teacher": student})["distill_loss"]
        sure = torch.zeros_like(student)
        sure[:, -1] = 20.0  # a teacher certain of the last candidate
        other = hcn({**batch, "cand_teacher": sure})["distill_loss"]
    hcn.eval()
    assert float(same) == pytest.approx(0.0, abs=1e-5) and float(other) > 0.5


def test_last_positions_keeps_each_users_latest():
    s = build_synthetic_retrieval(SyntheticConfig(n_users=5, n_items=60, n_categories=8, seq_len=12, short_len=4),
                                  hist_len=4).train
    keep = last_positions(s, 3)
    for u in np.unique(s.user):
        mine = np.flatnonzero(s.user == u)
        expect = mine[np.argsort(s.end[mine])][-3:]
        assert sorted(keep[s.user[keep] == u].tolist()) == sorted(expect.tolist())


def test_config_fails_at_load_with_the_values():
    with pytest.raises(ValueError, match=r"coarse_top_n \(300\) must be <= retrieval_top_n \(200\)"):
        CascadeConfig(retrieval_top_n=200, coarse_top_n=300)
    with pytest.raises(ValueError, match="no field 'nope'"):
        config_from_overrides(["nope=1"])
    assert config_from_overrides(["oof_epochs=4", "distill_weight=0.5", "ranker_long_len=None"]) == \
        CascadeConfig(oof_epochs=4, distill_weight=0.5, ranker_long_len=None)


def test_a_stage_trained_alone_is_promoted_only_if_the_cascade_keeps_its_recall(result, splits, tmp_path):
    """`recstream train --model ranker|hcn` (pipelines/training/promotion.py): a worse ranker is saved
    but the previous one stays latest, with the drop in the message; an equal one is promoted."""
    from features.model_store import promote, save_artifact
    from pipelines.training.promotion import guard_stage

    save_cascade(result, splits, "v1", tmp_path, promote=False)
    for name in ("two_tower", "hcn", "ranker"):
        promote(name, "v1", tmp_path)
    fusion_only_ranker = {"fusion": {"retrieval_weight": 0.0, "coarse_weight": 0.0, "ranker_weight": 1.0}}
    torch.manual_seed(1)
    worse = type(result.models.ranker)(result.models.ranker.config)
    for p in worse.parameters():  # an untrained ranker: its order is noise
        nn.init.normal_(p, std=1.0)
    worse.set_item_categories(torch.as_tensor(splits.item_cat))
    save_artifact("ranker", "v2", worse.eval(), worse.config, splits.vocabs, {}, splits.data_window, root=tmp_path,
                  extra=fusion_only_ranker)
    v = guard_stage("ranker", "v2", "v1", tmp_path, splits=splits, cfg=CFG)
    assert not v.promoted and latest_version("ranker", tmp_path) == "v1" and "v2" in list_versions("ranker", tmp_path)
    assert "ranker v2 lowers validation Recall@10 of the cascade from" in v.message
    assert v.valid["cascade_recall_at_10"] < v.valid["two_tower_hcn_recall_at_10"]

    same = result.models.ranker
    save_artifact("ranker", "v3", same.eval(), same.config, splits.vocabs, {}, splits.data_window, root=tmp_path,
                  extra={"fusion": result.fusion.model_dump()})
    v = guard_stage("ranker", "v3", "v1", tmp_path, splits=splits, cfg=CFG)
    assert v.promoted == (v.valid["cascade_recall_at_10"] >= v.valid["two_tower_hcn_recall_at_10"])
    assert latest_version("ranker", tmp_path) == ("v3" if v.promoted else "v1")


def test_set_metrics_counts_a_lost_positive_as_a_miss():
    cands = np.array([[5, 6, 7], [8, 9, 10]])
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    rec, nd = set_metrics(scores, cands, np.array([6, 99]), k=1)  # row 0: hit at rank 0; row 1: not in the set
    assert rec == pytest.approx(0.5) and nd == pytest.approx(0.5)
    rec, nd = set_metrics(scores, cands, np.array([7, 8]), k=2)  # both at rank 1 / rank 0
    assert rec == pytest.approx(1.0) and nd == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_top_by_keeps_the_best_first():
    cands = np.array([[5, 6, 7, 8]])
    assert top_by(np.array([[0.1, 0.9, 0.5, 0.7]]), cands, 2).tolist() == [[6, 8]]


def test_last_positions_per_user():
    users = np.array([1, 1, 1, 2, 2, 1])
    items = np.arange(1, 7)
    ts = np.array([0, 1, 2, 0, 1, 3]) * 1000
    store = SequenceStore(users, items, ts, 3)
    s = Samples(store, users, items, ts, store.own_rows(), 4)
    assert sorted(last_positions(s, 2).tolist()) == [2, 3, 4, 5]  # user 1: its 2 latest (rows 2, 5); user 2: both


def test_the_like_head_is_calibrated_on_validation_and_served_so(result, splits, tmp_path):
    """/v1/score returns the like head through the Platt scaling fitted on validation: the saved
    ranker carries it and the servable applies it."""
    cal = result.like_calibration
    assert set(cal) == {"scale", "bias"} and np.isfinite(list(cal.values())).all()
    assert result.diagnostics["like_ece_calibrated"] <= result.diagnostics["like_ece_raw"] + 1e-9
    paths = save_cascade(result, splits, "v1", tmp_path, promote=False)
    assert json.loads((paths["ranker"] / "manifest.json").read_text())["extra"]["like_calibration"] == cal
    served = RankerServable(ModelRef(name="ranker", version="v1"), str(tmp_path))
    items = list(splits.vocabs["item"].tokens[:5])
    _, prob = served.score_heads("u-unknown", [], items, None, None, None)
    with torch.no_grad():
        rows = torch.as_tensor(served.vocabs["item"].encode(items))
        _, like = served.model.score_user(torch.tensor([served.vocabs["user"].index("u-unknown")]),
                                          torch.zeros(1, served.model.config.short_len, dtype=torch.long), rows,
                                          long_interest=torch.zeros(len(items), served.model.config.dim), head="both")
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(cal["scale"] * like.numpy() + cal["bias"]))), rtol=1e-5, atol=1e-6)


def test_train_cascade_command_exits_1_and_names_the_stage_when_refused(result, splits, tmp_path, monkeypatch):
    """`recstream train cascade`: a refused cascade is saved, not promoted, and the command fails with
    the guard's sentence; an accepted one is promoted (training replaced by the fixture's result)."""
    from typer.testing import CliRunner

    from pipelines.training.commands import app

    m = result.models
    worse = evaluate_cascade(CascadeModels(m.two_tower, m.hcn, _OracleRanker(-1.0, m.ranker.config.long_len)),
                             FusionConfig(), splits, "valid", CFG)
    monkeypatch.setattr("pipelines.training.jobs.load_splits", lambda job: splits)
    monkeypatch.setattr("pipelines.training.cascade.train_cascade",
                        lambda splits, cfg, seed, progress=False: dataclasses.replace(result, valid=worse))
    out = CliRunner().invoke(app, ["train", "cascade", "--version", "v7", "--artifacts-dir", str(tmp_path)])
    assert out.exit_code == 1 and "ranker v7 lowers validation Recall@10 of the cascade" in out.output
    assert list_versions("ranker", tmp_path) == ["v7"] and promoted_version("ranker", tmp_path) is None

    better = dict(worse, cascade_recall_at_10=1.0)
    monkeypatch.setattr("pipelines.training.cascade.train_cascade",
                        lambda splits, cfg, seed, progress=False: dataclasses.replace(result, valid=better))
    out = CliRunner().invoke(app, ["train", "cascade", "--version", "v8", "--artifacts-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert all(promoted_version(n, tmp_path) == "v8" for n in ("two_tower", "hcn", "ranker"))
