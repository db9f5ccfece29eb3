"""The cascade on ML-100k, each stage trained for its place, measured per stage (issue 22).

Standard protocol (leave-last-out, full catalogue, the user's earlier items masked), per seed:

1. two-tower: trained on the training positions with its defaults (pipelines/training/defaults.py).
2. out-of-fold two-towers (2 folds by user, same settings, the final two-tower's best epoch count):
   each mines the top-1,000 of the positions of the users it never saw (cascade_data.py).
3. HCN: its defaults, plus a softmax over each position's set (the positive + hard negatives from
   the out-of-fold top-1,000) beside its in-batch softmax; early stopping on validation coarse
   recall@200 over the final two-tower's top-1,000.
4. ranker (SDIM + DIN + DCNv2, listwise order head + like head): sets of the positive + hard
   negatives from the out-of-fold two-tower's top-200 + random negatives; early stopping on
   validation Recall@20 over the validation coarse top-200.
5. fusion weights (scoring/fusion.py): a grid on validation Recall@20 over the coarse top-200.
6. test, once: retrieval recall@1000, coarse recall@200, and Recall@20 / NDCG@20 of the two-tower
   alone, two-tower -> HCN, the ranker alone over the coarse 200, and the fused cascade.

`python -m benchmarks.cascade_ml100k --seeds 0 1 2` writes reports/cascade.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.data.datasets import Samples, build_ml100k_retrieval
from pipelines.data.movielens import DEFAULT_PROTOCOL
from pipelines.training.cascade_data import build_candidate_sets, mine_out_of_fold, top_n_masked
from pipelines.training.defaults import default_job
from pipelines.training.jobs import ML100K_HIST_LEN, build, evaluator
from pipelines.training.loop import fit
from pipelines.training.metrics import recall_ndcg_at_k
from scoring.fusion import FusionConfig, fuse

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_THREADS = 1  # as the models benchmark: one thread on 2 shared cores


@dataclasses.dataclass(frozen=True)
class CascadeBenchConfig:
    retrieval_top_n: int = 1000  # candidates retrieval hands the coarse stage
    coarse_top_n: int = 200  # candidates the coarse stage hands the ranker
    k: int = 20
    n_folds: int = 2
    hcn_hard: int = 32  # hard negatives per HCN set, from the out-of-fold top-1,000
    ranker_hard: int = 12  # hard negatives per ranker set, from the out-of-fold top-200
    ranker_random: int = 3
    hcn_epochs: int = 3
    ranker_epochs: int = 3
    ranker_batch_size: int = 128
    ranker_lr: float = 1e-3
    ranker_long_term: str = "sdim"
    # a smaller network than the synthetic benchmark's (dim 64, 3 cross layers, MLP 256-128): one
    # listwise step scores batch x set rows, and at the full size an epoch alone overran the 5-minute
    # budget on one thread (1.4 s per 128 x 20 rows)
    ranker_dim: int = 32
    ranker_positions_per_user: int = 20  # the ranker trains on each user's last 20 positions (time budget)
    fusion_grid: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        if self.coarse_top_n > self.retrieval_top_n:
            raise ValueError(f"coarse_top_n ({self.coarse_top_n}) must be <= retrieval_top_n ({self.retrieval_top_n})")
        if self.k > self.coarse_top_n:
            raise ValueError(f"k ({self.k}) must be <= coarse_top_n ({self.coarse_top_n})")


# ---------- scoring helpers (no grad, eval mode) ----------

def catalogue_scorer(model, catalogue: np.ndarray):
    """A ScoreFn of a retrieval model: (samples, idx) -> (len(idx), N) scores over the catalogue."""
    cat_t = torch.as_tensor(catalogue, dtype=torch.long)

    @torch.no_grad()
    def score(samples: Samples, idx: np.ndarray) -> np.ndarray:
        model.eval()
        return model.score_catalogue(samples.batch(idx), cat_t).float().numpy()

    return score


@torch.no_grad()
def score_sets_catalogue(model, samples: Samples, cands: np.ndarray, n_items: int, batch_size: int = 512) -> np.ndarray:
    """(n, M) a retrieval/coarse model's score of each row's candidates (item rows)."""
    model.eval()
    items = torch.arange(n_items, dtype=torch.long)
    out = np.empty(cands.shape, dtype=np.float32)
    for s in range(0, len(samples), batch_size):
        idx = np.arange(s, min(s + batch_size, len(samples)))
        full = model.score_catalogue(samples.batch(idx), items).float().numpy()  # (b, n_items)
        out[idx] = np.take_along_axis(full, cands[idx].astype(np.int64), 1)
    return out


@torch.no_grad()
def ranker_scores(model, samples: Samples, cands: np.ndarray, batch_users: int = 32) -> np.ndarray:
    """(n, M) the ranker's ordering-head logits of each row's candidates."""
    model.eval()
    out = np.empty(cands.shape, dtype=np.float32)
    for s in range(0, len(samples), batch_users):
        idx = np.arange(s, min(s + batch_users, len(samples)))
        batch = samples.batch(idx)
        batch["cands"] = torch.as_tensor(cands[idx], dtype=torch.long)
        out[idx] = model(batch)["score"].float().numpy()
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


# ---------- one seed ----------

def _fit_fold_two_tower(splits, seed: int, epochs: int):
    job = default_job("two_tower", "ml100k", train_overrides={"seed": seed, "num_threads": NUM_THREADS, "progress": False})
    cfg = dataclasses.replace(job.train, epochs=epochs, patience_epochs=epochs)

    def train_fold(train_idx: np.ndarray):
        model = build(job, splits)
        fit(model, splits.train.subset(train_idx), cfg)  # fixed epoch count: the final model's, chosen on validation
        return catalogue_scorer(model, splits.catalogue)

    return train_fold


def run_seed(seed: int, cfg: CascadeBenchConfig, progress: bool = False) -> dict[str, float]:
    torch.set_num_threads(NUM_THREADS)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    splits = build_ml100k_retrieval(ML100K_HIST_LEN, protocol=DEFAULT_PROTOCOL)
    train, valid, test = splits.train, splits.valid, splits.test
    n_items = splits.vocabs["item"].size
    r: dict[str, float] = {}
    secs: dict[str, float] = {}

    # 1. two-tower
    t = time.perf_counter()
    tt_job = default_job("two_tower", "ml100k", train_overrides={"seed": seed, "num_threads": NUM_THREADS, "progress": progress})
    tt = build(tt_job, splits)
    tt_fit = fit(tt, train, tt_job.train, evaluate=evaluator(tt_job, splits), monitor=tt_job.monitor, mode="max")
    tt.eval()
    secs["two_tower"] = time.perf_counter() - t
    log.info("seed %d two-tower: best epoch %d, valid %s, %.0f s", seed, tt_fit.best_epoch, tt_fit.best_metrics, secs["two_tower"])

    # 2. out-of-fold mining for the training positions
    t = time.perf_counter()
    mined = mine_out_of_fold(train, splits.catalogue, _fit_fold_two_tower(splits, seed, tt_fit.best_epoch),
                             cfg.retrieval_top_n, cfg.n_folds, seed)
    secs["oof_mining"] = time.perf_counter() - t
    r["oof_retrieval_recall_at_1000_train"] = hit_rate(mined.top, train.item)
    r["oof_retrieval_recall_at_200_train"] = hit_rate(mined.top[:, : cfg.coarse_top_n], train.item)
    log.info("seed %d OOF mining %.0f s: train recall@1000 %.4f @200 %.4f", seed, secs["oof_mining"],
             r["oof_retrieval_recall_at_1000_train"], r["oof_retrieval_recall_at_200_train"])

    # retrieval candidates of validation and test (the final two-tower never trained on these positions)
    tt_score = catalogue_scorer(tt, splits.catalogue)
    ret = {name: top_n_masked(tt_score, s, splits.catalogue, cfg.retrieval_top_n).astype(np.int64)
           for name, s in (("valid", valid), ("test", test))}

    # 3. HCN on the two-tower's candidates
    t = time.perf_counter()
    hcn_job = default_job("hcn", "ml100k", train_overrides={"seed": seed, "num_threads": NUM_THREADS, "progress": progress,
                                                            "epochs": cfg.hcn_epochs})
    hcn = build(hcn_job, splits)
    hcn_sets = build_candidate_sets(train, mined.top, cfg.hcn_hard, 0, splits.catalogue, seed)

    def eval_hcn(m) -> dict[str, float]:
        s = score_sets_catalogue(m, valid, ret["valid"], n_items)
        rec, _ = set_metrics(s, ret["valid"], valid.item, cfg.k)
        return {"coarse_recall_at_200": hit_rate(top_by(s, ret["valid"], cfg.coarse_top_n), valid.item),
                "recall_at_20": rec}

    hcn_fit = fit(hcn, hcn_sets, hcn_job.train, evaluate=eval_hcn, monitor="coarse_recall_at_200", mode="max")
    hcn.eval()
    secs["hcn"] = time.perf_counter() - t
    log.info("seed %d HCN: best epoch %d, valid %s, %.0f s", seed, hcn_fit.best_epoch, hcn_fit.best_metrics, secs["hcn"])

    stage_scores: dict[str, dict[str, np.ndarray]] = {}
    coarse: dict[str, np.ndarray] = {}
    for name, s in (("valid", valid), ("test", test)):
        hcn_s = score_sets_catalogue(hcn, s, ret[name], n_items)
        coarse[name] = top_by(hcn_s, ret[name], cfg.coarse_top_n)
        stage_scores[name] = {"retrieval": score_sets_catalogue(tt, s, coarse[name], n_items),
                              "coarse": score_sets_catalogue(hcn, s, coarse[name], n_items)}
        stage_scores[name]["_hcn_over_retrieval"] = hcn_s

    # 4. ranker on the stage above's candidates
    t = time.perf_counter()
    rk_job = default_job("ranker", "ml100k", train_overrides={
        "seed": seed, "num_threads": NUM_THREADS, "progress": progress, "epochs": cfg.ranker_epochs,
        "batch_size": cfg.ranker_batch_size, "lr": cfg.ranker_lr, "patience_epochs": 1},
        model_overrides={"listwise": True, "long_term": cfg.ranker_long_term, "dim": cfg.ranker_dim,
                         "sdim": {"dim": cfg.ranker_dim}, "cross_layers": 2, "mlp_hidden": (4 * cfg.ranker_dim, 2 * cfg.ranker_dim),
                         "din_hidden": (cfg.ranker_dim, cfg.ranker_dim // 2)})
    ranker = build(rk_job, splits)  # long_len = the 200 behaviours the samples keep
    keep = _last_positions(train, cfg.ranker_positions_per_user)
    like = (splits.extras["rating"]["train"] >= 4.0).astype(np.float32)
    rk_base = dataclasses.replace(train.subset(keep), label=like[keep])
    rk_sets = build_candidate_sets(rk_base, mined.top[keep], cfg.ranker_hard, cfg.ranker_random, splits.catalogue,
                                   seed + 1, hard_pool=cfg.coarse_top_n)

    def eval_ranker(m) -> dict[str, float]:
        s = ranker_scores(m, valid, coarse["valid"])
        rec, nd = set_metrics(s, coarse["valid"], valid.item, cfg.k)
        return {"recall_at_20": rec, "ndcg_at_20": nd}

    rk_fit = fit(ranker, rk_sets, rk_job.train, evaluate=eval_ranker, monitor="recall_at_20", mode="max")
    ranker.eval()
    secs["ranker"] = time.perf_counter() - t
    log.info("seed %d ranker: %d sets x %d, best epoch %d, valid %s, %.0f s", seed, len(rk_sets), rk_sets.cands.shape[1],
             rk_fit.best_epoch, rk_fit.best_metrics, secs["ranker"])
    for name, s in (("valid", valid), ("test", test)):
        stage_scores[name]["ranker"] = ranker_scores(ranker, s, coarse[name])

    # 5. fusion weights on validation
    grid = [FusionConfig(retrieval_weight=a, coarse_weight=b, ranker_weight=c)
            for a, b, c in itertools.product(cfg.fusion_grid, cfg.fusion_grid, (0.0, 1.0)) if a + b + c > 0]
    best, best_key = None, (-1.0, -1.0)
    for fc in grid:
        sc = {k: v for k, v in stage_scores["valid"].items() if not k.startswith("_")}
        key = set_metrics(fuse(sc, fc), coarse["valid"], valid.item, cfg.k)
        if key > best_key:
            best, best_key = fc, key
    r["fusion_retrieval_weight"], r["fusion_coarse_weight"], r["fusion_ranker_weight"] = (
        best.retrieval_weight, best.coarse_weight, best.ranker_weight)
    r["valid_cascade_recall_at_20"], r["valid_cascade_ndcg_at_20"] = best_key

    # 6. the numbers, per split (valid: what chose; test: reported once)
    for name, s in (("valid", valid), ("test", test)):
        pre = "" if name == "test" else "valid_"
        sc = stage_scores[name]
        r[f"{pre}retrieval_recall_at_1000"] = hit_rate(ret[name], s.item)
        r[f"{pre}coarse_recall_at_200"] = hit_rate(coarse[name], s.item)
        tt_full = score_sets_catalogue(tt, s, ret[name], n_items)
        r[f"{pre}two_tower_only_recall_at_20"], r[f"{pre}two_tower_only_ndcg_at_20"] = set_metrics(tt_full, ret[name], s.item, cfg.k)
        r[f"{pre}two_tower_hcn_recall_at_20"], r[f"{pre}two_tower_hcn_ndcg_at_20"] = set_metrics(
            sc["_hcn_over_retrieval"], ret[name], s.item, cfg.k)
        r[f"{pre}ranker_alone_recall_at_20"], r[f"{pre}ranker_alone_ndcg_at_20"] = set_metrics(sc["ranker"], coarse[name], s.item, cfg.k)
        fused = fuse({k: v for k, v in sc.items() if not k.startswith("_")}, best)
        rec, nd = set_metrics(fused, coarse[name], s.item, cfg.k)
        if name == "test":
            r["cascade_recall_at_20"], r["cascade_ndcg_at_20"] = rec, nd
    r.update({f"train_seconds_{k}": v for k, v in secs.items()})
    r["train_seconds_total"] = float(sum(secs.values()))
    r["seconds_total"] = time.perf_counter() - t_all
    r["cpu_seconds_total"] = time.process_time() - cpu_all  # this process's CPU time: what contention cannot inflate
    r["epochs_two_tower"], r["epochs_hcn"], r["epochs_ranker"] = (float(tt_fit.best_epoch), float(hcn_fit.best_epoch),
                                                                  float(rk_fit.best_epoch))
    log.info("seed %d: %s", seed, {k: round(v, 4) for k, v in r.items()})
    return r


def _last_positions(samples: Samples, per_user: int) -> np.ndarray:
    """Indices of each user's last `per_user` positions (by their place in the sequence store)."""
    order = np.lexsort((samples.end, samples.user))
    u = samples.user[order]
    from_end = np.empty(len(u), dtype=np.int64)
    # rank from the end within each user's run
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    ends = np.r_[starts[1:], len(u)]
    for a, b in zip(starts, ends):
        from_end[a:b] = np.arange(b - a)[::-1]
    return np.sort(order[from_end < per_user])


# ---------- report ----------

SUMMARY_KEYS = ("cascade_recall_at_20", "cascade_ndcg_at_20", "two_tower_only_recall_at_20", "two_tower_only_ndcg_at_20",
                "two_tower_hcn_recall_at_20", "ranker_alone_recall_at_20", "retrieval_recall_at_1000",
                "coarse_recall_at_200", "train_seconds_total")


def summarise(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"cascade_seeds": float(len(per_seed))}
    for key in per_seed[next(iter(per_seed))]:
        vals = [per_seed[s][key] for s in per_seed]
        out[f"{key}_ml100k"] = float(np.mean(vals))
        out[f"{key}_ml100k_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        for s in per_seed:
            out[f"{key}_ml100k_seed{s}"] = per_seed[s][key]
    out["cascade_ge_two_tower_every_seed"] = float(all(v["cascade_recall_at_20"] >= v["two_tower_only_recall_at_20"]
                                                       for v in per_seed.values()))
    out["cascade_ge_two_tower_hcn_every_seed"] = float(all(v["cascade_recall_at_20"] >= v["two_tower_hcn_recall_at_20"]
                                                           for v in per_seed.values()))
    return out


def write_reports(summary: dict, per_seed: dict, cfg: CascadeBenchConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cascade.json").write_text(json.dumps({**summary, "settings": dataclasses.asdict(cfg)}, indent=2, sort_keys=True))
    seeds = sorted(per_seed)
    lines = ["# Cascade on ML-100k: every stage trained for its place (issue 22)", "",
             f"Generated by `python -m benchmarks.cascade_ml100k --seeds {' '.join(map(str, seeds))}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, torch {torch.__version__}, "
             "CPU, one torch thread, 2 cores shared with other jobs (wall times are upper bounds).", "",
             f"Protocol `{DEFAULT_PROTOCOL}` (leave-last-out, full catalogue, earlier items masked). Test numbers; "
             "every choice (epochs, fusion weights) was made on validation.", "",
             "| seed | retrieval R@1000 | coarse R@200 | two-tower R@20 | two-tower→HCN R@20 | ranker alone R@20 | "
             "cascade R@20 | cascade NDCG@20 | two-tower NDCG@20 | fusion w (ret, coarse, ranker) | train s | all s (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        v = per_seed[s]
        lines.append(f"| {s} | {v['retrieval_recall_at_1000']:.4f} | {v['coarse_recall_at_200']:.4f} | "
                     f"{v['two_tower_only_recall_at_20']:.4f} | {v['two_tower_hcn_recall_at_20']:.4f} | "
                     f"{v['ranker_alone_recall_at_20']:.4f} | {v['cascade_recall_at_20']:.4f} | {v['cascade_ndcg_at_20']:.4f} | "
                     f"{v['two_tower_only_ndcg_at_20']:.4f} | {v['fusion_retrieval_weight']:g}, {v['fusion_coarse_weight']:g}, "
                     f"{v['fusion_ranker_weight']:g} | {v['train_seconds_total']:.0f} | {v['seconds_total']:.0f} ({v['cpu_seconds_total']:.0f}) |")
    if len(seeds) > 1:
        m = summary
        lines.append(f"| mean ± std | {m['retrieval_recall_at_1000_ml100k']:.4f} | {m['coarse_recall_at_200_ml100k']:.4f} | "
                     f"{m['two_tower_only_recall_at_20_ml100k']:.4f} ± {m['two_tower_only_recall_at_20_ml100k_std']:.4f} | "
                     f"{m['two_tower_hcn_recall_at_20_ml100k']:.4f} | {m['ranker_alone_recall_at_20_ml100k']:.4f} | "
                     f"{m['cascade_recall_at_20_ml100k']:.4f} ± {m['cascade_recall_at_20_ml100k_std']:.4f} | "
                     f"{m['cascade_ndcg_at_20_ml100k']:.4f} ± {m['cascade_ndcg_at_20_ml100k_std']:.4f} | "
                     f"{m['two_tower_only_ndcg_at_20_ml100k']:.4f} | | {m['train_seconds_total_ml100k']:.0f} | "
                     f"{m['seconds_total_ml100k']:.0f} ({m['cpu_seconds_total_ml100k']:.0f}) |")
    lines += ["", "Validation (what chose the epochs and the fusion weights):", "",
              "| seed | two-tower R@20 | two-tower→HCN R@20 | ranker alone R@20 | cascade R@20 |", "|---|---|---|---|---|"]
    for s in seeds:
        v = per_seed[s]
        lines.append(f"| {s} | {v['valid_two_tower_only_recall_at_20']:.4f} | {v['valid_two_tower_hcn_recall_at_20']:.4f} | "
                     f"{v['valid_ranker_alone_recall_at_20']:.4f} | {v['valid_cascade_recall_at_20']:.4f} |")
    m = summary
    worst_cpu = max(per_seed[s]["cpu_seconds_total"] for s in seeds if "cpu_seconds_total" in per_seed[s]) \
        if any("cpu_seconds_total" in per_seed[s] for s in seeds) else float("nan")
    lines += ["", "## Goals (issue 22)", "", "| goal | measured | met |", "|---|---|---|"]
    for goal, measured, ok in (
            ("cascade Recall@20 ≥ 0.30 (mean)", m["cascade_recall_at_20_ml100k"], m["cascade_recall_at_20_ml100k"] >= 0.30),
            ("cascade NDCG@20 ≥ 0.125 (mean)", m["cascade_ndcg_at_20_ml100k"], m["cascade_ndcg_at_20_ml100k"] >= 0.125),
            ("cascade ≥ two-tower alone, every seed", min(per_seed[s]["cascade_recall_at_20"] - per_seed[s]["two_tower_only_recall_at_20"]
                                                         for s in seeds), bool(m["cascade_ge_two_tower_every_seed"])),
            ("cascade ≥ two-tower → HCN, every seed", min(per_seed[s]["cascade_recall_at_20"] - per_seed[s]["two_tower_hcn_recall_at_20"]
                                                         for s in seeds), bool(m["cascade_ge_two_tower_hcn_every_seed"])),
            ("all training of one seed < 300 s (slowest seed, CPU s of the process)", worst_cpu, worst_cpu < 300)):
        lines.append(f"| {goal} | {measured:.0f} s |" if "300 s" in goal else f"| {goal} | {measured:.4f} |")
        lines[-1] += f" {'yes' if ok else 'NO'} |"
    lines += ["", "(the two \"every seed\" rows give the smallest margin over the seeds.)", "",
              "## How each stage was trained", "",
              f"- Retrieval: the two-tower with its defaults. Its candidates for the training positions of the later "
              f"stages are mined out of fold: {cfg.n_folds} folds by user, each fold's top-{cfg.retrieval_top_n} (history "
              "masked) from a two-tower trained on the other folds' users only, for the final two-tower's "
              "validation-chosen epoch count (tests/unit/pipelines/test_cascade_data.py checks no mined position's "
              "user was trained on).",
              f"- Coarse (HCN): its defaults ({cfg.hcn_epochs}-epoch cap) plus, beside the in-batch softmax, a softmax "
              f"over each position's set: the positive and {cfg.hcn_hard} hard negatives drawn from the out-of-fold "
              f"top-{cfg.retrieval_top_n}. Early stopping on validation coarse recall@{cfg.coarse_top_n}.",
              f"- Ranker (SDIM + DIN + DCNv2, listwise order head + like head, rating ≥ 4): sets of the positive, "
              f"{cfg.ranker_hard} hard negatives from the out-of-fold two-tower's top-{cfg.coarse_top_n} (a stand-in for "
              f"an out-of-fold HCN's top-{cfg.coarse_top_n}, which would cost another HCN per fold) and "
              f"{cfg.ranker_random} random ones; each user's last {cfg.ranker_positions_per_user} positions and a smaller "
              f"network (dim {cfg.ranker_dim}) for the time budget; its settings were not searched. Early stopping on "
              f"validation Recall@{cfg.k} over the validation coarse top-{cfg.coarse_top_n}.",
              "- Final order: scoring/fusion.py, the stages' scores z-scored over the coarse candidates and blended; "
              "the weights are the best of a grid on validation Recall@20 (NDCG@20 breaks ties).",
              "- \"ranker alone\" orders the same coarse candidates by the ranker's order head only.", "",
              f"Settings: `{json.dumps(dataclasses.asdict(cfg))}`", ""]
    (out_dir / "cascade.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a CascadeBenchConfig field (int/float/str), e.g. --set ranker_epochs=3")
    p.add_argument("--reuse", action="store_true", help="take a seed's result from cascade_runs/seed<N>.json when "
                   "it was run with the same settings (seeds run in separate processes, then one report)")
    p.add_argument("--no-report", action="store_true", help="only write cascade_runs/seed<N>.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    over = {}
    types = {f.name: f.type for f in dataclasses.fields(CascadeBenchConfig)}
    for kv in a.set:
        k, _, v = kv.partition("=")
        if k not in types:
            raise SystemExit(f"--set {k!r}: unknown field; known: {sorted(types)}")
        over[k] = int(v) if types[k] == "int" else float(v) if types[k] == "float" else v
    cfg = CascadeBenchConfig(**over)
    runs = a.out_dir / "cascade_runs"
    runs.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(cfg)
    per_seed = {}
    for s in a.seeds:
        path = runs / f"seed{s}.json"
        if a.reuse and path.exists() and json.loads(path.read_text())["settings"] == json.loads(json.dumps(settings)):
            per_seed[s] = json.loads(path.read_text())["result"]  # a seed's run of these settings (another process)
            log.info("seed %d: reusing %s", s, path)
            continue
        per_seed[s] = run_seed(s, cfg)
        path.write_text(json.dumps({"settings": settings, "result": per_seed[s]}, indent=1, sort_keys=True))
    if a.no_report:
        return
    summary = summarise(per_seed)
    write_reports(summary, per_seed, cfg, a.out_dir)
    print(json.dumps({k: round(v, 4) for k, v in summary.items() if "seed" not in k or k == "cascade_seeds"}, indent=1))


if __name__ == "__main__":
    main()
