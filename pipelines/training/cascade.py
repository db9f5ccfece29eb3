"""The three-stage cascade trained for its place: two-tower -> HCN -> listwise ranker -> fusion.

Each later stage learns on what the stage above hands it at serving time (DESIGN.md, "The
cascade: every stage trained for its place"):

1. two-tower: its defaults (pipelines/training/defaults.py), early stopping on validation R@20.
2. out-of-fold two-towers (`n_folds` folds by user): each mines the top-`retrieval_top_n` of the
   training positions of the users it never saw (cascade_data.py).
3. HCN: in-batch softmax plus a softmax over each position's set (the positive + hard negatives
   from the out-of-fold top-N); early stopping on validation coarse recall@`coarse_top_n`.
4. ranker (SDIM + DIN + DCNv2, listwise order head + like head): sets of the positive + hard
   negatives from the out-of-fold top-`coarse_top_n` + random ones; early stopping on validation
   Recall@k over the validation coarse top-`coarse_top_n`.
5. optional distillation of HCN from the ranker's order (`distill_epochs`): a KL term between
   HCN's softmax over a candidate set and the ranker's order softmax over the same set; kept only
   when it raises validation coarse recall (chosen on validation, like everything here).
6. fusion weights (scoring/fusion.py): a grid on validation Recall@k over the coarse top-N.

Windows (training = serving, scoring/servables.py): the two-tower reads the last `hist_len`
behaviours, HCN the last `long_len` (and `short_len` of those), the ranker's DIN the last
`short_len`, and the ranker's SDIM block ALL of the user's behaviours (at serving its interest
comes from BSE tables summed over every behaviour, capped only by the BSE's max_seq_len of
10,000): the ranker's training samples therefore carry the whole history (`ranker_long_len`
None = the longest history in the data). `CascadeResult.windows` records them and each
artefact's manifest carries its own (extra["windows"]).

Features: the cascade models take ids and sequences only (n_user_feats = n_item_feats = 0). So
splits joined with Feast features (`pipelines.training.jobs.load_splits` with features="feast")
train the same models as plain ML-100k splits: the dense features are dropped here, and no item
feature can have one time meaning at training (as of the sample) and another at serving (as of
now).

Public surface: `CascadeConfig`, `train_cascade`, `evaluate_cascade`, `save_cascade`,
`check_promotion`, `PromotionRefused`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipelines.data.datasets import Samples, Splits
from pipelines.training.calibration import expected_calibration_error, fit_platt
from pipelines.training.cascade_data import build_candidate_sets, mine_out_of_fold, top_n_masked
from pipelines.training.defaults import default_job
from pipelines.training.jobs import DATASETS, TrainJob, build, evaluator, model_config
from pipelines.training.loop import TrainConfig, fit
from pipelines.training.metrics import recall_ndcg_at_k
from scoring.fusion import FusionConfig, fuse

log = logging.getLogger(__name__)

STAGE_NAMES = ("two_tower", "hcn", "ranker")
PREFIXES = ("two_tower_only", "two_tower_hcn", "two_tower_ranker", "ranker_alone", "cascade")


@dataclass(frozen=True)
class CascadeConfig:
    retrieval_top_n: int = 1000  # candidates retrieval hands the coarse stage
    coarse_top_n: int = 200  # candidates the coarse stage hands the ranker
    k: int = 20  # the slate: Recall@k / NDCG@k
    n_folds: int = 2
    # epochs of each out-of-fold two-tower; None = the final two-tower's validation-chosen count. 6
    # (of its 12): half the mining cost, and on ML-100k seed 0 the half-data fold models mined a
    # better top-200 for the training positions (out-of-fold recall@200 0.688 vs 0.661 at 12)
    oof_epochs: int | None = 6
    two_tower_epochs: int | None = None  # cap; None = the two-tower's ML-100k default (12)
    hcn_hard: int = 32  # hard negatives per HCN set, from the out-of-fold top-N
    hcn_epochs: int = 3
    ranker_hard: int = 12  # hard negatives per ranker set, from the out-of-fold top-coarse_top_n
    ranker_random: int = 3
    ranker_epochs: int = 3
    ranker_batch_size: int = 128
    ranker_lr: float = 1e-3
    ranker_long_term: Literal["sdim", "none"] = "sdim"
    # a smaller network than the synthetic benchmark's (dim 64, 3 cross layers, MLP 256-128): one
    # listwise step scores batch x set rows, and at full size an epoch alone overran the 5-minute
    # budget on one thread (1.4 s per 128 x 20 rows)
    ranker_dim: int = 32
    ranker_positions_per_user: int = 20  # the ranker trains on each user's last N positions (time budget)
    # behaviours the ranker's SDIM block sees; None = the longest history in the data, i.e. all of
    # them, as the BSE tables it reads at serving
    ranker_long_len: int | None = None
    # validate the ranker after every epoch (early stopping on validation Recall@k); False = the
    # fixed epoch count, one validation pass per epoch saved (a pass over the 200 coarse candidates
    # of every validation user costs about a quarter of a training epoch)
    # False for the CPU budget: with per-epoch validation the ranker peaked at its last (3rd) epoch in
    # 3 of 5 ML-100k runs, at epochs 2 and 1 in the others (seeds 1 and 2 of the first report)
    ranker_validate_each_epoch: bool = False
    # HCN epochs distilled from the ranker's order after the ranker, the best kept by validation
    # coarse recall (and none if none beats the HCN before it); 0 = off
    distill_epochs: int = 2
    distill_weight: float = 1.0  # weight of the KL term beside HCN's own losses
    distill_lr: float = 1e-3
    # retrieval and coarse weights, each relative to a ranker weight of 0 or 1; up to 8 because the
    # retrieval weight chose 4, the grid's edge, on all three ML-100k seeds with a grid up to 4
    fusion_grid: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    num_threads: int = 1  # torch threads: the benchmarks run on 2 shared cores

    def __post_init__(self) -> None:
        if self.coarse_top_n > self.retrieval_top_n:
            raise ValueError(f"coarse_top_n ({self.coarse_top_n}) must be <= retrieval_top_n ({self.retrieval_top_n})")
        if self.k > self.coarse_top_n:
            raise ValueError(f"k ({self.k}) must be <= coarse_top_n ({self.coarse_top_n})")
        for name in ("hcn_epochs", "ranker_epochs", "ranker_positions_per_user", "ranker_batch_size", "ranker_dim",
                     "num_threads", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        for name in ("oof_epochs", "two_tower_epochs", "ranker_long_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1 or None")
        if self.ranker_hard + self.ranker_random < 1 or self.hcn_hard < 1:
            raise ValueError(f"ranker_hard + ranker_random ({self.ranker_hard} + {self.ranker_random}) and hcn_hard "
                             f"({self.hcn_hard}) must be >= 1")
        if self.distill_epochs < 0 or self.distill_weight < 0:
            raise ValueError(f"distill_epochs ({self.distill_epochs}) and distill_weight ({self.distill_weight}) must be >= 0")
        if not self.fusion_grid or min(self.fusion_grid) < 0:
            raise ValueError(f"fusion_grid ({self.fusion_grid}) must be non-empty and >= 0")
        if self.ranker_long_term not in ("sdim", "none"):
            raise ValueError(f"ranker_long_term ({self.ranker_long_term!r}) must be sdim or none (what the BSE serves)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CascadeConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"CascadeConfig: unknown fields {sorted(unknown)}")
        d = dict(d)
        if "fusion_grid" in d:
            d["fusion_grid"] = tuple(d["fusion_grid"])
        return cls(**d)


def config_from_overrides(pairs: list[str]) -> CascadeConfig:
    """FIELD=VALUE pairs over CascadeConfig's defaults (int / float / str / None)."""
    over: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(CascadeConfig)}
    for kv in pairs:
        k, _, v = kv.partition("=")
        if k not in fields:
            raise ValueError(f"CascadeConfig has no field {k!r}; known: {sorted(fields)}")
        t = str(fields[k].type)
        try:
            if v == "None" and "None" in t:
                over[k] = None
            elif t.startswith("bool"):
                over[k] = {"true": True, "false": False, "1": True, "0": False}[v.lower()]
            elif t.startswith("int"):
                over[k] = int(v)
            elif t.startswith("float"):
                over[k] = float(v)
            elif t.startswith("tuple"):
                over[k] = tuple(float(x) for x in v.split(","))
            else:
                over[k] = v
        except (ValueError, KeyError) as e:
            raise ValueError(f"CascadeConfig.{k} ({v!r}) is not a {t}") from e
    return CascadeConfig(**over)


@dataclass
class CascadeModels:
    two_tower: nn.Module
    hcn: nn.Module
    ranker: nn.Module


@dataclass
class CascadeResult:
    """What train_cascade hands back.

    valid: validation metrics per prefix (`evaluate_cascade` keys: <prefix>_recall_at_<k>,
        <prefix>_ndcg_at_<k>, retrieval_recall_at_<N>, coarse_recall_at_<M>).
    epochs: each stage's best epoch; seconds / cpu_seconds: per step of the training.
    jobs: the TrainJob of each stage (its manifest's extra["job"]); windows: the history windows
        each stage trained with (= what serving reads).
    """

    models: CascadeModels
    fusion: FusionConfig
    config: CascadeConfig
    valid: dict[str, float]
    epochs: dict[str, int]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    jobs: dict[str, TrainJob]
    windows: dict[str, dict[str, int | str]]
    seed: int
    diagnostics: dict[str, float] = field(default_factory=dict)
    fit_history: dict[str, list[dict]] = field(default_factory=dict)
    like_calibration: dict[str, float] = field(default_factory=dict)  # Platt (scale, bias) of the like head


class PromotionRefused(Exception):
    """save_cascade saved the versions but did not mark them latest: the reasons say which stage
    lowers the validation cascade and by how much."""

    def __init__(self, reasons: list[str], paths: dict[str, Path]):
        super().__init__("; ".join(reasons))
        self.reasons, self.paths = reasons, paths


# ---------- scoring helpers (no grad, eval mode) ----------

def _catalogue_scorer(model: nn.Module, catalogue: np.ndarray):
    """A ScoreFn of a retrieval model: (samples, idx) -> (len(idx), N) scores over the catalogue."""
    cat_t = torch.as_tensor(catalogue, dtype=torch.long)

    @torch.no_grad()
    def score(samples: Samples, idx: np.ndarray) -> np.ndarray:
        model.eval()
        return model.score_catalogue(samples.batch(idx), cat_t).float().numpy()

    return score


@torch.no_grad()
def score_sets_catalogue(model: nn.Module, samples: Samples, cands: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(n, M) a retrieval/coarse model's score of each row's candidates (item rows): the same
    number `score_catalogue` gives (cosine / temperature for the two-tower, as RetrievalServable.top_n)."""
    model.eval()
    out = np.empty(cands.shape, dtype=np.float32)
    for s in range(0, len(samples), batch_size):
        idx = np.arange(s, min(s + batch_size, len(samples)))
        uniq, inv = np.unique(cands[idx], return_inverse=True)  # score only the items the rows name
        part = model.score_catalogue(samples.batch(idx), torch.as_tensor(uniq, dtype=torch.long)).float().numpy()  # (b, U)
        out[idx] = np.take_along_axis(part, inv.reshape(len(idx), -1), 1)
    return out


@torch.no_grad()
def ranker_scores(model: nn.Module, samples: Samples, cands: np.ndarray, batch_users: int = 32,
                  head: Literal["score", "logit"] = "score") -> np.ndarray:
    """(n, M) the ranker's ordering-head logits of each row's candidates ("logit": the like head's)."""
    model.eval()
    out = np.empty(cands.shape, dtype=np.float32)
    for s in range(0, len(samples), batch_users):
        idx = np.arange(s, min(s + batch_users, len(samples)))
        batch = samples.batch(idx)
        batch["cands"] = torch.as_tensor(cands[idx], dtype=torch.long)
        out[idx] = model(batch)[head].float().numpy()
    return out


def set_metrics(scores: np.ndarray, cands: np.ndarray, positives: np.ndarray, k: int) -> tuple[float, float]:
    """Recall@k / NDCG@k of the order `scores` (n, M) over each row's candidates; a positive that
    is not among them is a miss. Ties count in expectation (metrics.recall_ndcg_at_k)."""
    where = cands == positives[:, None]  # (n, M)
    present = where.any(1)
    if not present.any():
        return 0.0, 0.0
    rec, nd = recall_ndcg_at_k(scores[present], where[present].argmax(1), k)
    frac = present.mean()
    return float(rec * frac), float(nd * frac)


def top_by(scores: np.ndarray, cands: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) the n candidates with the highest scores, best first (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(cands, order, 1)


def hit_rate(cands: np.ndarray, positives: np.ndarray) -> float:
    return float((cands == positives[:, None]).any(1).mean())


def last_positions(samples: Samples, per_user: int) -> np.ndarray:
    """Indices of each user's last `per_user` positions (by their place in the sequence store)."""
    order = np.lexsort((samples.end, samples.user))
    u = samples.user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    run_len = np.diff(np.r_[starts, len(u)])
    # rank from the end within each user's run
    from_end = np.repeat(starts + run_len - 1, run_len) - np.arange(len(u))
    return np.sort(order[from_end < per_user])


# ---------- windows and data ----------

def _ids_only(splits: Splits) -> Splits:
    """The splits without dense features: the cascade models take ids and sequences only."""
    strip = lambda s: dataclasses.replace(s, user_feats=None, item_feats=None)  # noqa: E731
    return dataclasses.replace(splits, train=strip(splits.train), valid=strip(splits.valid), test=strip(splits.test),
                               catalogue_item_feats=None)


def longest_history(splits: Splits) -> int:
    """The most behaviours any user has in the splits' sequence store (their whole history)."""
    return max(1, int(np.diff(splits.train.store.user_ptr).max(initial=1)))


def _with_hist(samples: Samples, hist_len: int) -> Samples:
    return dataclasses.replace(samples, hist_len=hist_len) if samples.hist_len != hist_len else samples


def _at_least(splits: Splits, hist_len: int) -> Splits:
    """The splits with every sample's history window at least `hist_len`: a stage must never train
    on fewer behaviours than it reads at serving (e.g. samples cut at 16, a two-tower that pools 50)."""
    lift = lambda s: _with_hist(s, max(s.hist_len, hist_len))  # noqa: E731
    return dataclasses.replace(splits, train=lift(splits.train), valid=lift(splits.valid), test=lift(splits.test))


def stage_windows(models: CascadeModels) -> dict[str, dict[str, int | str]]:
    """The history each stage reads, from the models' configs: the same fields the servables read
    (scoring/servables.py: RetrievalServable.hist_len, CoarseServable's long_len, RankerServable's
    short_len for DIN and the BSE tables, over all behaviours, for SDIM)."""
    tt, hcn, rk = models.two_tower.config, models.hcn.config, models.ranker.config
    return {"two_tower": {"hist_len": tt.hist_len},
            "hcn": {"long_len": hcn.long_len, "short_len": hcn.short_len},
            "ranker": {"short_len": rk.short_len, "long_len": rk.long_len,
                       "long_term": rk.long_term, "serving_long_term_source": "bse_tables_all_behaviours"}}


def _data_name(splits: Splits) -> str:
    name = splits.meta.get("dataset", "ml100k")
    return name if name in DATASETS else "ml100k"


def _like_labels(splits: Splits, samples_name: str, n: int) -> np.ndarray:
    """Like label of each position (rating >= 4); data without ratings: every interaction a like."""
    rating = splits.extras.get("rating", {}).get(samples_name)
    return np.ones(n, dtype=np.float32) if rating is None else (np.asarray(rating) >= 4.0).astype(np.float32)


# ---------- per-split stage scores and metrics ----------

@dataclass
class _SplitScores:
    ret: np.ndarray  # (n, N) retrieval top-N item rows, best first
    hcn_over_ret: np.ndarray  # (n, N) HCN scores of ret
    coarse: np.ndarray  # (n, M) coarse top-M item rows, best first
    stage: dict[str, np.ndarray]  # retrieval / coarse / ranker scores over `coarse` (n, M)


def _retrieve(two_tower: nn.Module, samples: Samples, splits: Splits, cfg: CascadeConfig) -> tuple[np.ndarray, np.ndarray]:
    ret = top_n_masked(_catalogue_scorer(two_tower, splits.catalogue), samples, splits.catalogue,
                       cfg.retrieval_top_n).astype(np.int64)
    return ret, score_sets_catalogue(two_tower, samples, ret)


def _coarse(hcn: nn.Module, samples: Samples, ret: np.ndarray, cfg: CascadeConfig) -> tuple[np.ndarray, np.ndarray]:
    s = score_sets_catalogue(hcn, samples, ret)
    return s, top_by(s, ret, cfg.coarse_top_n)


def _metrics(sc: _SplitScores, tt_over_ret: np.ndarray, two_tower_ranker: np.ndarray, tt_top_m: np.ndarray,
             fusion: FusionConfig, samples: Samples, cfg: CascadeConfig) -> dict[str, float]:
    k, pos = cfg.k, samples.item
    r: dict[str, float] = {f"retrieval_recall_at_{cfg.retrieval_top_n}": hit_rate(sc.ret, pos),
                           f"coarse_recall_at_{cfg.coarse_top_n}": hit_rate(sc.coarse, pos)}
    for prefix, scores, cands in (("two_tower_only", tt_over_ret, sc.ret), ("two_tower_hcn", sc.hcn_over_ret, sc.ret),
                                  ("two_tower_ranker", two_tower_ranker, tt_top_m),
                                  ("ranker_alone", sc.stage["ranker"], sc.coarse),
                                  ("cascade", fuse(sc.stage, fusion), sc.coarse)):
        r[f"{prefix}_recall_at_{k}"], r[f"{prefix}_ndcg_at_{k}"] = set_metrics(scores, cands, pos, k)
    return r


def _without_coarse(fusion: FusionConfig) -> FusionConfig:
    """The fusion of the cascade without HCN: the same weights, the coarse one dropped."""
    if fusion.retrieval_weight + fusion.ranker_weight <= 0:
        return FusionConfig(retrieval_weight=0.0, coarse_weight=0.0, ranker_weight=1.0)
    return FusionConfig(retrieval_weight=fusion.retrieval_weight, coarse_weight=0.0, ranker_weight=fusion.ranker_weight)


@dataclass
class _AllScores:
    """Everything one split's metrics need: the cascade's scores plus the two-tower's own order of
    its top-N and the ranker over the two-tower's top-M (the cascade without HCN)."""

    sc: _SplitScores
    tt_over_ret: np.ndarray  # (n, N)
    tt_top_m: np.ndarray  # (n, M)
    ranker_over_tt: np.ndarray  # (n, M)


def _score_split(models: CascadeModels, splits: Splits, which: str, cfg: CascadeConfig,
                 ret_cache: tuple[np.ndarray, np.ndarray] | None = None) -> _AllScores:
    splits = _at_least(splits, max(models.two_tower.config.hist_len, models.hcn.config.long_len))
    samples = getattr(splits, which)
    rk_samples = _with_hist(samples, models.ranker.config.long_len)
    ret, tt_over_ret = ret_cache if ret_cache is not None else _retrieve(models.two_tower, samples, splits, cfg)
    hcn_s, coarse = _coarse(models.hcn, samples, ret, cfg)
    sc = _SplitScores(ret, hcn_s, coarse, {"retrieval": score_sets_catalogue(models.two_tower, samples, coarse),
                                           "coarse": score_sets_catalogue(models.hcn, samples, coarse),
                                           "ranker": ranker_scores(models.ranker, rk_samples, coarse)})
    tt_top_m = ret[:, : cfg.coarse_top_n]
    return _AllScores(sc, tt_over_ret, tt_top_m, ranker_scores(models.ranker, rk_samples, tt_top_m))


def _metrics_of(a: _AllScores, fusion: FusionConfig, samples: Samples, cfg: CascadeConfig) -> dict[str, float]:
    # the cascade without HCN: the ranker (fused with retrieval as the cascade is) over the two-tower's top-M
    tt_rk = fuse({"retrieval": a.tt_over_ret[:, : cfg.coarse_top_n], "ranker": a.ranker_over_tt}, _without_coarse(fusion))
    return _metrics(a.sc, a.tt_over_ret, tt_rk, a.tt_top_m, fusion, samples, cfg)


def _evaluate(models: CascadeModels, fusion: FusionConfig, splits: Splits, which: str, cfg: CascadeConfig) -> dict[str, float]:
    return _metrics_of(_score_split(models, splits, which, cfg), fusion, getattr(splits, which), cfg)


def evaluate_cascade(result_or_models: CascadeResult | CascadeModels, fusion: FusionConfig | None, splits: Splits,
                     which: Literal["valid", "test"] = "test", cfg: CascadeConfig | None = None) -> dict[str, float]:
    """Recall@k / NDCG@k of every prefix of the cascade on one split, and how much of the held-out
    item each cut keeps.

    Args:
        result_or_models: a CascadeResult (its fusion and config are the defaults) or CascadeModels.
        fusion: the final order's weights; None = the result's.
        cfg: cut sizes and k; None = the result's (or CascadeConfig()).
    Returns:
        {retrieval_recall_at_<N>, coarse_recall_at_<M>, <prefix>_recall_at_<k>, <prefix>_ndcg_at_<k>}
        for the prefixes two_tower_only (two-tower order of its top-N), two_tower_hcn (HCN order of
        the top-N), two_tower_ranker (the cascade without HCN: the ranker fused with retrieval over
        the two-tower's top-M), ranker_alone (the ranker's order of the coarse top-M) and cascade.
    """
    if isinstance(result_or_models, CascadeResult):
        models = result_or_models.models
        fusion = fusion or result_or_models.fusion
        cfg = cfg or result_or_models.config
    else:
        models = result_or_models
        if fusion is None:
            raise ValueError("evaluate_cascade: fusion is needed with bare CascadeModels")
    if which not in ("valid", "test"):
        raise ValueError(f"which ({which!r}) must be valid or test")
    return _evaluate(models, fusion, _ids_only(splits), which, cfg or CascadeConfig())


# ---------- training ----------

def _job(model: str, data: str, seed: int, cfg: CascadeConfig, progress: bool, train: dict[str, Any] | None = None,
         model_overrides: dict[str, Any] | None = None) -> TrainJob:
    job = default_job(model, "ml100k", train_overrides={"seed": seed, "num_threads": cfg.num_threads, "progress": progress,
                                                         **(train or {})}, model_overrides=model_overrides)
    return dataclasses.replace(job, data=data)  # the cascade's settings on whichever data the splits hold


class _Clock:
    """Wall and CPU seconds per step: CPU seconds of this process are what a loaded machine cannot inflate."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def step(self, name: str):
        clock = self

        class _Step:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.seconds[name] = clock.seconds.get(name, 0.0) + time.perf_counter() - self.t
                clock.cpu_seconds[name] = clock.cpu_seconds.get(name, 0.0) + time.process_time() - self.c

        return _Step()


def train_cascade(splits: Splits, cfg: CascadeConfig | None = None, seed: int = 0, progress: bool = False) -> CascadeResult:
    """Train the three stages for their place and choose the fusion on validation.

    Args:
        splits: retrieval splits (`build_ml100k_retrieval`, or `jobs.load_splits` with
            features="feast": the features are dropped, see the module docstring); the like label
            is splits.extras["rating"][split] >= 4 when present, else every interaction.
        cfg: settings (None = CascadeConfig()); seed: every stage's seed.
    Returns:
        CascadeResult with validation metrics of every prefix (evaluate_cascade's keys). Test is
        never looked at here.
    """
    cfg = cfg or CascadeConfig()
    torch.set_num_threads(cfg.num_threads)
    splits = _ids_only(splits)
    data = _data_name(splits)
    tt_job = _job("two_tower", data, seed, cfg, progress, {"epochs": cfg.two_tower_epochs})
    hcn_job = _job("hcn", data, seed, cfg, progress, {"epochs": cfg.hcn_epochs}, {"distill_weight": cfg.distill_weight})
    splits = _at_least(splits, max(model_config(tt_job, splits).hist_len, model_config(hcn_job, splits).long_len))
    train, valid = splits.train, splits.valid
    clock = _Clock()
    diag: dict[str, float] = {}
    history: dict[str, list[dict]] = {}

    # 1. two-tower
    with clock.step("two_tower"):
        tt = build(tt_job, splits)
        tt_fit = fit(tt, train, tt_job.train, evaluate=evaluator(tt_job, splits), monitor=tt_job.monitor, mode="max")
        tt.eval()
    history["two_tower"] = tt_fit.history
    log.info("seed %d two-tower: best epoch %d, valid %s", seed, tt_fit.best_epoch, tt_fit.best_metrics)

    # 2. out-of-fold mining for the training positions
    with clock.step("oof_mining"):
        oof_epochs = cfg.oof_epochs or tt_fit.best_epoch
        oof_train = dataclasses.replace(tt_job.train, epochs=oof_epochs, patience_epochs=oof_epochs, progress=False)

        def train_fold(train_idx: np.ndarray):
            model = build(tt_job, splits)
            fit(model, train.subset(train_idx), oof_train)  # a fixed epoch count, chosen on validation
            return _catalogue_scorer(model, splits.catalogue)

        mined = mine_out_of_fold(train, splits.catalogue, train_fold, cfg.retrieval_top_n, cfg.n_folds, seed)
    diag[f"oof_retrieval_recall_at_{cfg.retrieval_top_n}_train"] = hit_rate(mined.top, train.item)
    diag[f"oof_retrieval_recall_at_{cfg.coarse_top_n}_train"] = hit_rate(mined.top[:, : cfg.coarse_top_n], train.item)

    with clock.step("valid_retrieval"):  # the final two-tower never trained on these positions
        ret_valid = _retrieve(tt, valid, splits, cfg)

    # 3. HCN on the two-tower's candidates
    with clock.step("hcn"):
        hcn = build(hcn_job, splits)
        hcn_sets = build_candidate_sets(train, mined.top, cfg.hcn_hard, 0, splits.catalogue, seed)
        eval_hcn = _hcn_evaluator(valid, ret_valid[0], cfg)
        hcn_fit = fit(hcn, hcn_sets, hcn_job.train, evaluate=eval_hcn, monitor="coarse_recall", mode="max")
        hcn.eval()
    history["hcn"] = hcn_fit.history
    log.info("seed %d HCN: best epoch %d, valid %s", seed, hcn_fit.best_epoch, hcn_fit.best_metrics)

    # 4. ranker on the stage above's candidates, seeing the whole history (as the BSE tables at serving)
    with clock.step("ranker"):
        long_len = cfg.ranker_long_len or longest_history(splits)
        d = cfg.ranker_dim
        rk_job = _job("ranker", data, seed, cfg, progress,
                      {"epochs": cfg.ranker_epochs, "batch_size": cfg.ranker_batch_size, "lr": cfg.ranker_lr, "patience_epochs": 1},
                      {"listwise": True, "long_term": cfg.ranker_long_term, "dim": d, "sdim": {"dim": d}, "cross_layers": 2,
                       "mlp_hidden": (4 * d, 2 * d), "din_hidden": (d, d // 2), "long_len": long_len,
                       "short_len": min(50, long_len)})
        ranker = build(rk_job, splits)
        keep = last_positions(train, cfg.ranker_positions_per_user)
        rk_base = dataclasses.replace(_with_hist(train, long_len).subset(keep),
                                      label=_like_labels(splits, "train", len(train))[keep])
        rk_sets = build_candidate_sets(rk_base, mined.top[keep], cfg.ranker_hard, cfg.ranker_random, splits.catalogue,
                                       seed + 1, hard_pool=cfg.coarse_top_n)
        coarse_valid = _coarse(hcn, valid, ret_valid[0], cfg)[1]
        rk_valid = _with_hist(valid, long_len)

        def eval_ranker(m) -> dict[str, float]:
            rec, nd = set_metrics(ranker_scores(m, rk_valid, coarse_valid), coarse_valid, valid.item, cfg.k)
            return {"recall": rec, "ndcg": nd}

        if cfg.ranker_validate_each_epoch:
            rk_fit = fit(ranker, rk_sets, rk_job.train, evaluate=eval_ranker, monitor="recall", mode="max")
        else:  # a fixed epoch count: fit keeps the lowest training loss, the last epoch while the loss falls
            rk_fit = fit(ranker, rk_sets, dataclasses.replace(rk_job.train, patience_epochs=cfg.ranker_epochs))
        ranker.eval()
    history["ranker"] = rk_fit.history
    log.info("seed %d ranker: %d sets x %d, best epoch %d, valid %s", seed, len(rk_sets), rk_sets.cands.shape[1],
             rk_fit.best_epoch, rk_fit.best_metrics)

    # 5. HCN distilled from the ranker's order, kept only if validation coarse recall rises
    if cfg.distill_epochs:
        with clock.step("distill"):
            before = dict(hcn_fit.best_metrics)
            state = {k: v.detach().clone() for k, v in hcn.state_dict().items()}
            d_sets = build_candidate_sets(_with_hist(train, long_len).subset(keep), mined.top[keep], cfg.hcn_hard, 0,
                                          splits.catalogue, seed + 2)
            d_sets.teacher = ranker_scores(ranker, d_sets, d_sets.cands)  # (n, C) the ranker's order logits
            d_fit = fit(hcn, d_sets, TrainConfig(epochs=cfg.distill_epochs, batch_size=hcn_job.train.batch_size,
                                                 lr=cfg.distill_lr, patience_epochs=cfg.distill_epochs, seed=seed,
                                                 num_threads=cfg.num_threads, progress=progress),
                        evaluate=eval_hcn, monitor="coarse_recall", mode="max")
            kept = d_fit.best_metrics["coarse_recall"] > before["coarse_recall"]
            if not kept:
                hcn.load_state_dict(state)
            hcn.eval()
        history["distill"] = d_fit.history
        diag.update(distill_kept=float(kept), valid_coarse_recall_before_distill=before["coarse_recall"],
                    valid_coarse_recall_after_distill=d_fit.best_metrics["coarse_recall"],
                    valid_two_tower_hcn_recall_before_distill=before["recall"],
                    valid_two_tower_hcn_recall_after_distill=d_fit.best_metrics["recall"])
        log.info("seed %d distillation: valid coarse recall %.4f -> %.4f (%s)", seed, before["coarse_recall"],
                 d_fit.best_metrics["coarse_recall"], "kept" if kept else "dropped")

    # 6. fusion weights on validation
    with clock.step("fusion"):
        models = CascadeModels(tt, hcn, ranker)
        scores = _score_split(models, splits, "valid", cfg, ret_cache=ret_valid)
        fusion = choose_fusion(scores.sc.stage, scores.sc.coarse, valid.item, cfg)
        valid_metrics = _metrics_of(scores, fusion, valid, cfg)

    # 7. the like head's Platt scaling on validation (what /v1/score returns): the event is "the
    # user's next interaction is this candidate and is liked"; hard negatives made the raw head's
    # sigmoid a probability under the training sets' sampling, not of that event
    with clock.step("calibration"):
        like = ranker_scores(ranker, rk_valid, scores.sc.coarse, head="logit")  # (n, M)
        hit = (scores.sc.coarse == valid.item[:, None]) & (_like_labels(splits, "valid", len(valid))[:, None] > 0)  # (n, M)
        platt = fit_platt(like.ravel(), hit.ravel().astype(np.float64))
        diag.update(like_ece_raw=expected_calibration_error(1 / (1 + np.exp(-like.ravel())), hit.ravel()),
                    like_ece_calibrated=expected_calibration_error(platt(like.ravel()), hit.ravel()))

    epochs = {"two_tower": tt_fit.best_epoch, "oof_two_tower": oof_epochs, "hcn": hcn_fit.best_epoch, "ranker": rk_fit.best_epoch}
    jobs = {"two_tower": tt_job, "hcn": hcn_job, "ranker": rk_job}
    log.info("seed %d: fusion %s, valid %s, cpu s %s", seed, fusion.model_dump(), {k: round(v, 4) for k, v in valid_metrics.items()},
             {k: round(v) for k, v in clock.cpu_seconds.items()})
    return CascadeResult(models, fusion, cfg, valid_metrics, epochs, clock.seconds, clock.cpu_seconds, jobs,
                         stage_windows(models), seed, diag, history, platt.to_dict())


def _hcn_evaluator(valid: Samples, ret: np.ndarray, cfg: CascadeConfig):
    def eval_hcn(m) -> dict[str, float]:
        s = score_sets_catalogue(m, valid, ret)
        rec, _ = set_metrics(s, ret, valid.item, cfg.k)
        return {"coarse_recall": hit_rate(top_by(s, ret, cfg.coarse_top_n), valid.item), "recall": rec}

    return eval_hcn


def choose_fusion(stage: dict[str, np.ndarray], cands: np.ndarray, positives: np.ndarray, cfg: CascadeConfig) -> FusionConfig:
    """The grid's best weights on (validation) Recall@k, NDCG@k breaking ties; the ranker's weight is
    0 or 1 (the other two are relative to it)."""
    best, best_key = None, (-1.0, -1.0)
    for a, b, c in itertools.product(cfg.fusion_grid, cfg.fusion_grid, (0.0, 1.0)):
        if a + b + c <= 0:
            continue
        fc = FusionConfig(retrieval_weight=a, coarse_weight=b, ranker_weight=c)
        key = set_metrics(fuse(stage, fc), cands, positives, cfg.k)
        if key > best_key:
            best, best_key = fc, key
    assert best is not None  # the grid has a non-zero point (checked in CascadeConfig)
    return best


# ---------- artefacts and promotion ----------

def check_promotion(valid: dict[str, float], k: int = 20, version: str = "new") -> list[str]:
    """Why the cascade must not be promoted: one sentence per shorter cascade that beats it on
    validation Recall@k (empty = promote). Shorter cascades: without the ranker (two-tower -> HCN),
    without HCN (two-tower -> ranker), without both (two-tower alone)."""
    full = valid[f"cascade_recall_at_{k}"]
    reasons = []
    for stage, prefix in (("ranker", "two_tower_hcn"), ("hcn", "two_tower_ranker"), ("hcn + ranker", "two_tower_only")):
        key = f"{prefix}_recall_at_{k}"
        if key in valid and full < valid[key]:
            reasons.append(f"{stage} {version} lowers validation Recall@{k} of the cascade from {valid[key]:.4f} to "
                           f"{full:.4f} ({full - valid[key]:+.4f}): not marked latest")
    return reasons


def save_cascade(result: CascadeResult, splits: Splits, version: str | None = None, root: str | Path | None = None,
                 promote: bool = True) -> dict[str, Path]:
    """Save the three stages as artefacts `two_tower`, `hcn`, `ranker` of one version; mark them latest
    only if no shorter cascade beats the full one on validation (`check_promotion`).

    Manifests: extra["job"] (each stage's TrainJob), extra["windows"] (the history it reads),
    extra["cascade_valid"] (validation metrics of every prefix, all three), extra["fusion"]
    (FusionConfig.model_dump(), the ranker's), extra["like_calibration"] (the like head's Platt scale and bias,
    the ranker's), extra["cascade"] (settings, seed, epochs, seconds).
    Returns:
        {stage name: artefact directory}.
    Raises:
        PromotionRefused: the versions are saved, but not marked latest (promote=True only).
    """
    from features.model_store import new_version
    from features.model_store import promote as mark_latest
    from features.model_store import save_artifact

    version = version or new_version()
    splits = _ids_only(splits)
    common = {"cascade_valid": result.valid,
              "cascade": {"config": dataclasses.asdict(result.config), "seed": result.seed, "epochs": result.epochs,
                          "cpu_seconds": result.cpu_seconds, "seconds": result.seconds, "diagnostics": result.diagnostics,
                          "version": version, "stages": list(STAGE_NAMES),
                          "features_source": (splits.meta.get("features") or {}).get("source", "none")}}
    paths: dict[str, Path] = {}
    for name in STAGE_NAMES:
        model = getattr(result.models, name)
        extra = {**common, "job": result.jobs[name].to_dict(), "windows": result.windows[name],
                 "fit_history": result.fit_history.get(name, [])}
        if name == "ranker":
            extra["fusion"] = result.fusion.model_dump()
            if result.like_calibration:  # read by scoring.servables.RankerServable
                extra["like_calibration"] = result.like_calibration
        metrics = {"valid": {k: v for k, v in result.valid.items()}}
        paths[name] = save_artifact(name, version, model, model.config, splits.vocabs, metrics, splits.data_window,
                                    root=root, extra=extra)
    if not promote:
        return paths
    reasons = check_promotion(result.valid, result.config.k, version)
    if reasons:
        log.warning("cascade %s saved but not promoted: %s", version, "; ".join(reasons))
        raise PromotionRefused(reasons, paths)
    for name in STAGE_NAMES:
        mark_latest(name, version, root)
    return paths
