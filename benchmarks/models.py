"""Model benchmark: writes reports/models.json (flat keys) and reports/models.md.

1. ML-100k retrieval under the standard protocol (pipelines/data/movielens.py: leave-last-out,
   stable time order with same-second ties in file order, full catalogue with the user's train +
   validation items masked): two-tower, HCN, softmax popularity, count popularity, ItemKNN, BPR-MF;
   Recall@20 / NDCG@20 mean and standard deviation over seeds; wall time of all ML-100k training
   per seed. Every model trains with its defaults (pipelines/training/defaults.py), which are what
   `recstream train` uses; the ML-100k ones were chosen on validation (benchmarks/tune_ml100k.py).
2. Synthetic long sequences (long-term interests invisible in the last 50 behaviours): the CTR
   ranker with SDIM vs the same ranker with the collision-probability attention SDIM approximates,
   with softmax target attention, and DIN on the last 50; test AUC / GAUC / logloss mean and
   standard deviation over seeds (same world, training seed varies, so differences are paired),
   and the oracle AUC of the true click probabilities.
3. Long-term interest speed for 500 candidates of one user at d=64 on one thread: SDIM bucket
   path (tables precomputed as the BSE serves them; candidate hashing included) vs scaled
   dot-product target attention and DIN's MLP attention over the whole sequence.

Every number is measured in this run (or kept from the last run of its section); nothing is
copied from elsewhere. Standard deviations are sample ones (ddof=1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.layers import DinAttention
from models.sdim import build_bucket_tables, sdim_interest_from_tables
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines.data.movielens import DEFAULT_PROTOCOL, PROTOCOLS
from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.artifacts import save_artifact
from pipelines.training.defaults import default_job, defaults_for
from pipelines.training.jobs import JobResult, TrainJob, run_job
from pipelines.training.metrics import auc

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

# 3 seeds x 4 synthetic models at the earlier 6,000 users would take about an hour on 2 shared
# cores; 3,000 users (6,000 test impressions) keeps the section near half an hour.
BENCH_SYNTHETIC = SyntheticConfig(n_users=3000, n_items=1000, seq_len=500, n_impressions=12)
SEEDS = (0, 1, 2)
# One torch thread: on 2 cores shared with other jobs, 2 OpenMP threads hit descheduled-thread
# barriers and an epoch can take 45x longer (seen: 90 s vs 2 s for the same two-tower epoch).
NUM_THREADS = 1
# (registry name, report prefix, label)
ML100K_MODELS = (("two_tower", "ml100k", "two-tower (sampled softmax + logQ)"), ("hcn", "ml100k_hcn", "HCN"),
                 ("popularity", "ml100k_popularity", "popularity (softmax-trained logits)"),
                 ("pop_count", "ml100k_pop_count", "popularity (training counts)"),
                 ("itemknn", "ml100k_itemknn", "ItemKNN (item-item cosine)"), ("bpr", "ml100k_bpr", "BPR-MF"))
SYNTHETIC_MODELS = (("ranker", "sdim", "SDIM + DIN(50) + DCNv2"),
                    ("collision_attention", "collision_attention", "collision attention (what SDIM approximates) + DIN(50) + DCNv2"),
                    ("full_attention", "full_attention", "softmax target attention + DIN(50) + DCNv2"),
                    ("din_last50", "din_last50", "DIN on the last 50 only + DCNv2"))


def _median_seconds(fn: Callable[[], object], min_reps: int = 5, min_seconds: float = 0.5, max_reps: int = 200) -> float:
    fn()  # warm-up
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_reps or (time.perf_counter() < t_end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.inference_mode()
def bench_long_term_speed(lengths=(1000, 10000), n_candidates: int = 500, dim: int = 64, seed: int = 0,
                          din_max_pairs: int = 5_000_000) -> dict[str, float]:
    """Seconds to compute the long-term interest of n_candidates for one user, one thread."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hasher = SdimHasher(SdimConfig(dim=dim))
        rng = np.random.default_rng(seed)
        cands = torch.from_numpy(rng.standard_normal((n_candidates, dim)).astype(np.float32))  # (N, d)
        din = DinAttention(dim).eval()
        out: dict[str, float] = {}
        for L in lengths:
            seq = rng.standard_normal((L, dim)).astype(np.float32)  # (L, d)
            tables = torch.from_numpy(build_bucket_tables(seq, hasher)[0])  # (S, B, d): what the BSE serves
            keys = torch.from_numpy(seq)

            def sdim_path():
                return sdim_interest_from_tables(tables, hasher.signatures(cands))  # (N, d)

            def attention():
                w = torch.softmax(cands @ keys.T / math.sqrt(dim), dim=-1)  # (N, L)
                return w @ keys  # (N, d)

            chunk = max(1, din_max_pairs // L)  # bound the (chunk, L, 4d) activation

            def din_attention():
                mask = torch.ones(chunk, L, dtype=torch.bool)
                for s in range(0, n_candidates, chunk):
                    q = cands[s : s + chunk]
                    din(q, keys.expand(len(q), -1, -1), mask[: len(q)])

            sdim_s = _median_seconds(sdim_path)
            att_s = _median_seconds(attention)
            din_s = _median_seconds(din_attention, min_reps=1 if L > 2000 else 3, min_seconds=0.0)
            out[f"sdim_seconds_L{L}"] = sdim_s
            out[f"attention_seconds_L{L}"] = att_s
            out[f"din_attention_seconds_L{L}"] = din_s
            out[f"sdim_speedup_vs_attention_L{L}"] = att_s / sdim_s
            out[f"sdim_speedup_vs_din_attention_L{L}"] = din_s / sdim_s
        # The lookup alone, candidate signatures precomputed (items are static per model version).
        sigs = hasher.signatures(cands)
        out["sdim_lookup_only_seconds"] = _median_seconds(lambda: sdim_interest_from_tables(tables, sigs))
        return out
    finally:
        torch.set_num_threads(prev_threads)


def _train(job: TrainJob, save_root: Path | None, version: str) -> tuple[JobResult, float, float]:
    """Train, evaluate and optionally save; returns (result, wall seconds, process CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_job(job)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if save_root is not None:
        save_artifact(f"{job.model}-{job.data}", f"{version}-seed{job.train.seed}", result.model, result.model.config,
                      result.splits.vocabs, {"valid": result.valid_metrics, "test": result.test_metrics},
                      result.splits.data_window, root=save_root,
                      extra={"job": job.to_dict(), "fit_history": result.fit.history, "train_seconds": seconds})
    return result, seconds, cpu_seconds


def _job(model: str, data: str, seed: int, progress: bool, epochs_cap: int | None, **kw) -> TrainJob:
    """The model's default job (defaults.py: what `recstream train` runs), on one thread."""
    return default_job(model, data, epochs_cap, train_overrides={"seed": seed, "num_threads": NUM_THREADS, "progress": progress},
                       **kw)


def _mean_std(r: dict, key: str, values: list[float]) -> None:
    r[f"{key}_mean"] = float(np.mean(values))
    r[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


SECTIONS = ("speed", "ml100k", "synthetic")


def run_bench(out_dir: Path | None = None, artifacts_root: Path | None = None, synthetic: SyntheticConfig = BENCH_SYNTHETIC,
              seeds: tuple[int, ...] = SEEDS, ml100k_epochs_cap: int | None = None,
              synthetic_epochs_cap: int | None = None, speed_lengths=(1000, 10000), progress: bool = True,
              sections=SECTIONS) -> dict[str, float | str]:
    """Run the benchmark and write models.json / models.md under out_dir (default reports/).

    `sections` re-runs only some parts; the other keys are kept from the existing models.json.
    The epoch caps shorten every model's default (the CLI's --quick plumbing check).
    """
    out_dir = Path(out_dir or REPO_ROOT / "reports")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"sections {sorted(unknown)} unknown; choose from {SECTIONS}")
    version = time.strftime("bench-%Y%m%dT%H%M%S", time.gmtime())
    r: dict = {}
    settings: dict = {}
    if set(sections) != set(SECTIONS) and (out_dir / "models.json").exists():
        r.update(json.loads((out_dir / "models.json").read_text()))
        md_settings = out_dir / "models_settings.json"
        if md_settings.exists():
            settings.update(json.loads(md_settings.read_text()))

    if "speed" in sections:
        log.info("speed: long-term interest for 500 candidates")
        r.update(bench_long_term_speed(speed_lengths))

    if "ml100k" in sections:
        _bench_ml100k(r, seeds, progress, ml100k_epochs_cap, artifacts_root, version)
        settings["ml100k"] = {"protocol": DEFAULT_PROTOCOL, "protocol_description": PROTOCOLS[DEFAULT_PROTOCOL].description,
                              "seeds": list(seeds), "epochs_cap": ml100k_epochs_cap, "num_threads": NUM_THREADS,
                              "hyper_parameters": {m: dataclasses.asdict(defaults_for(m, "ml100k")) for m, _, _ in ML100K_MODELS}}

    if "synthetic" in sections:
        _bench_synthetic(r, synthetic, seeds, progress, synthetic_epochs_cap, artifacts_root, version)
        settings["synthetic"] = {"world": dataclasses.asdict(synthetic), "seeds": list(seeds),
                                 "epochs_cap": synthetic_epochs_cap, "num_threads": NUM_THREADS,
                                 "hyper_parameters": {m: dataclasses.asdict(defaults_for(m, "synthetic"))
                                                      for m, _, _ in SYNTHETIC_MODELS}}
    settings["sections_run_last"] = list(sections)
    r = {k: v if isinstance(v, str) else float(v) for k, v in r.items()}
    write_reports(r, out_dir, settings)
    return r


def _bench_ml100k(r: dict, seeds, progress: bool, epochs_cap, artifacts_root, version: str) -> None:
    log.info("ML-100k retrieval, protocol %s, seeds %s", DEFAULT_PROTOCOL, list(seeds))
    per_seed_seconds, per_seed_cpu = [], []
    got: dict[str, dict[str, list[float]]] = {p: {} for _, p, _ in ML100K_MODELS}
    for seed in seeds:
        total = cpu_total = 0.0
        for name, prefix, _ in ML100K_MODELS:
            res, sec, cpu = _train(_job(name, "ml100k", seed, progress, epochs_cap, protocol=DEFAULT_PROTOCOL),
                                   artifacts_root, version)
            total += sec
            cpu_total += cpu
            row = {"recall_at_20": res.test_metrics["recall_at_20"], "ndcg_at_20": res.test_metrics["ndcg_at_20"],
                   "valid_recall_at_20": res.valid_metrics["recall_at_20"], "train_seconds": sec,
                   "train_epochs": len(res.fit.history)}
            for k, v in row.items():
                got[prefix].setdefault(k, []).append(v)
            r[f"{prefix}_recall_at_20_seed{seed}"] = row["recall_at_20"]
            log.info("seed %d %s: test %s, %.1f s", seed, name, res.test_metrics, sec)
        per_seed_seconds.append(total)
        per_seed_cpu.append(cpu_total)
    for name, prefix, _ in ML100K_MODELS:
        g = got[prefix]
        for k in ("recall_at_20", "ndcg_at_20", "valid_recall_at_20"):
            _mean_std(r, f"{prefix}_{k}", g[k])
        # the keys reports had before seeds (one run each) now hold the mean over seeds
        r[f"{prefix}_recall_at_20"] = r[f"{prefix}_recall_at_20_mean"]
        r[f"{prefix}_ndcg_at_20"] = r[f"{prefix}_ndcg_at_20_mean"]
        r[f"train_seconds_ml100k_{name}"] = float(np.mean(g["train_seconds"]))
        r[f"train_epochs_ml100k_{name}"] = float(np.mean(g["train_epochs"]))
    _bench_ml100k_other_protocol(r, seeds, progress, epochs_cap)
    r["ml100k_protocol"] = DEFAULT_PROTOCOL
    r["ml100k_seeds"] = float(len(seeds))
    for short in ("pop_count", "bpr", "itemknn"):
        r[f"{short}_recall_at_20"] = r[f"ml100k_{short}_recall_at_20_mean"]
    r["train_seconds_ml100k"] = float(np.mean(per_seed_seconds))  # all ML-100k training of one seed
    r["train_seconds_ml100k_max_seed"] = float(np.max(per_seed_seconds))
    r["train_cpu_seconds_ml100k"] = float(np.mean(per_seed_cpu))  # CPU time of this process: what contention cannot inflate


OTHER_PROTOCOL = "strict_time"
OTHER_PROTOCOL_MODELS = ("two_tower", "pop_count", "itemknn")


def _bench_ml100k_other_protocol(r: dict, seeds, progress: bool, epochs_cap) -> None:
    """A few models under the earlier protocol too, same settings and seeds: what the protocol
    alone changes. Not counted in the per-seed training time (not part of the model set)."""
    for name in OTHER_PROTOCOL_MODELS:
        rec, nd = [], []
        for seed in seeds:
            res = run_job(_job(name, "ml100k", seed, progress, epochs_cap, protocol=OTHER_PROTOCOL))
            rec.append(res.test_metrics["recall_at_20"])
            nd.append(res.test_metrics["ndcg_at_20"])
        _mean_std(r, f"ml100k_{OTHER_PROTOCOL}_{name}_recall_at_20", rec)
        _mean_std(r, f"ml100k_{OTHER_PROTOCOL}_{name}_ndcg_at_20", nd)


def _bench_synthetic(r: dict, synthetic: SyntheticConfig, seeds, progress: bool, epochs_cap, artifacts_root,
                     version: str) -> None:
    log.info("synthetic CTR: SDIM vs collision attention vs softmax attention vs DIN last 50, seeds %s", list(seeds))
    got: dict[str, dict[str, list[float]]] = {k: {} for _, k, _ in SYNTHETIC_MODELS}
    for seed in seeds:
        for name, key, _ in SYNTHETIC_MODELS:
            res, sec, _ = _train(_job(name, "synthetic", seed, progress, epochs_cap, synthetic=synthetic),
                                 artifacts_root, version)
            row = {"auc": res.test_metrics["auc"], "gauc": res.test_metrics["gauc"],
                   "logloss": res.test_metrics["logloss"], "train_seconds": sec, "train_epochs": len(res.fit.history)}
            for k, v in row.items():
                got[key].setdefault(k, []).append(v)
            r[f"synthetic_auc_{key}_seed{seed}"] = row["auc"]
            log.info("seed %d %s: test %s, %.1f s", seed, name, res.test_metrics, sec)
            if name == "ranker" and seed == seeds[0]:
                test = res.splits.test
                r["synthetic_auc_oracle"] = auc(test.label, res.splits.extras["click_prob_test"])
                r["synthetic_n_test"] = float(len(test))
    for _, key, _ in SYNTHETIC_MODELS:
        g = got[key]
        for metric in ("auc", "gauc", "logloss"):
            _mean_std(r, f"synthetic_{metric}_{key}", g[metric])
            r[f"synthetic_{metric}_{key}"] = r[f"synthetic_{metric}_{key}_mean"]  # the single-run key, now the mean
        r[f"train_seconds_synthetic_{key}"] = float(np.mean(g["train_seconds"]))
        r[f"train_epochs_synthetic_{key}"] = float(np.mean(g["train_epochs"]))
    r["synthetic_auc_softmax_attention_mean"] = r["synthetic_auc_full_attention_mean"]
    r["synthetic_auc_softmax_attention_std"] = r["synthetic_auc_full_attention_std"]
    r["synthetic_seeds"] = float(len(seeds))
    # same world and test set for every model: the per-seed difference is the paired comparison
    for other in ("collision_attention", "full_attention", "din_last50"):
        diffs = [a - b for a, b in zip(got["sdim"]["auc"], got[other]["auc"])]
        _mean_std(r, f"synthetic_auc_sdim_minus_{other}", diffs)


def _pm(r: dict, key: str, digits: int = 4) -> str:
    if f"{key}_mean" not in r:
        return "n/a"
    return f"{r[f'{key}_mean']:.{digits}f} ± {r.get(f'{key}_std', float('nan')):.{digits}f}"


def goals(r: dict) -> list[tuple[str, str, bool]]:
    lengths = sorted(int(k.rsplit("_L", 1)[1]) for k in r if k.startswith("sdim_speedup_vs_attention_L"))
    speedups = [r[f"sdim_speedup_vs_attention_L{L}"] for L in lengths]
    nan = float("nan")
    gap = r.get("synthetic_auc_sdim_minus_collision_attention_mean", nan)
    rows = [
        ("speed-up >= 50x at L=10,000", f"{r.get('sdim_speedup_vs_attention_L10000', nan):.1f}x",
         r.get("sdim_speedup_vs_attention_L10000", 0) >= 50),
        ("speed-up rising with L", " < ".join(f"{s:.1f}x" for s in speedups), all(a < b for a, b in zip(speedups, speedups[1:]))),
        ("bucket path, 500 candidates < 1 ms (1 thread)", f"{max(r[f'sdim_seconds_L{L}'] for L in lengths) * 1e3:.3f} ms",
         max(r[f"sdim_seconds_L{L}"] for L in lengths) < 1e-3),
        (f"two-tower mean Recall@20 >= 0.21 ({r.get('ml100k_protocol', '?')} protocol, {int(r.get('ml100k_seeds', 0))} seeds)",
         _pm(r, "ml100k_recall_at_20"), r.get("ml100k_recall_at_20_mean", 0) >= 0.21),
        ("two-tower mean NDCG@20 >= 0.092", _pm(r, "ml100k_ndcg_at_20"), r.get("ml100k_ndcg_at_20_mean", 0) >= 0.092),
        ("SDIM mean AUC within 0.002 of the collision attention", f"{gap:+.4f} (paired, ± {r.get('synthetic_auc_sdim_minus_collision_attention_std', nan):.4f})",
         abs(gap) <= 0.002),
        ("SDIM mean AUC >= DIN(last 50) + 0.01", f"{r.get('synthetic_auc_sdim_minus_din_last50_mean', nan):+.4f}",
         r.get("synthetic_auc_sdim_minus_din_last50_mean", 0) >= 0.01),
        ("all ML-100k training for one seed < 180 s (slowest seed)", f"{r.get('train_seconds_ml100k_max_seed', nan):.1f} s",
         r.get("train_seconds_ml100k_max_seed", math.inf) < 180),
    ]
    return rows


def _hyper_rows(hp: dict) -> list[str]:
    rows = []
    for model, h in hp.items():
        train = ", ".join(f"{k}={v}" for k, v in h["train"].items())
        over = ", ".join(f"{k}={v}" for k, v in h["model"].items()) or "-"
        rows.append(f"| {model} | {train} | {over} | {h['chosen']} |")
    return rows


def write_reports(r: dict, out_dir: Path, settings: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "models.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
    (out_dir / "models_settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n")
    lengths = sorted(int(k.rsplit("_L", 1)[1]) for k in r if k.startswith("sdim_speedup_vs_attention_L"))
    ml, syn = settings.get("ml100k", {}), settings.get("synthetic", {})
    seeds_ml = ", ".join(str(x) for x in ml.get("seeds", []))
    lines = [
        "# Model benchmark",
        "",
        f"Generated by `recstream bench models` (benchmarks/models.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only, one torch thread; the 2 cores "
        f"were shared with other jobs, so wall times are upper bounds. Sections run this time: "
        f"{', '.join(settings.get('sections_run_last', []))} (the others are kept from their last run).",
        "",
        f"## ML-100k retrieval: protocol `{r.get('ml100k_protocol', '?')}`, mean ± std over seeds {seeds_ml}",
        "",
        f"Protocol: {ml.get('protocol_description', '?')}. Per user, the last interaction (stable sort by timestamp, "
        "same-second ties in the order of the RecBole `ml-100k.inter` file) is the test target, the one before it the "
        "validation target; all 1,682 items are ranked for each of the 943 users, with the items the user interacted "
        "with before the target masked (for test: all train and validation items). Models read the history before the "
        "target in that order; BPR-MF and the count popularity are fitted on the training interactions only. "
        "Hyper-parameters were chosen on the validation split (below); test numbers were not looked at.",
        "",
        "| model | Recall@20 | NDCG@20 | valid Recall@20 | train s per seed | epochs |",
        "|---|---|---|---|---|---|",
    ]
    for name, prefix, label in ML100K_MODELS:
        if f"{prefix}_recall_at_20_mean" not in r:
            continue
        lines.append(f"| {label} | {_pm(r, prefix + '_recall_at_20')} | {_pm(r, prefix + '_ndcg_at_20')} | "
                     f"{_pm(r, prefix + '_valid_recall_at_20')} | {r.get('train_seconds_ml100k_' + name, float('nan')):.1f} | "
                     f"{r.get('train_epochs_ml100k_' + name, float('nan')):.1f} |")
    if "ml100k_recall_at_20_mean" in r:
        per_seed = ", ".join(f"{r[k]:.4f}" for k in sorted(k for k in r if k.startswith("ml100k_recall_at_20_seed")))
        lines += ["", f"Two-tower test Recall@20 per seed: {per_seed}. All ML-100k training of one seed (data loading and "
                  f"per-epoch validation included): {r['train_seconds_ml100k']:.1f} s wall on average, "
                  f"{r['train_seconds_ml100k_max_seed']:.1f} s for the slowest seed, {r.get('train_cpu_seconds_ml100k', float('nan')):.1f} s "
                  "CPU of this process."]
    if f"ml100k_{OTHER_PROTOCOL}_two_tower_recall_at_20_mean" in r:
        lines += ["", f"The same models, settings and seeds under the earlier protocol `{OTHER_PROTOCOL}` "
                  f"({PROTOCOLS[OTHER_PROTOCOL].description}), for comparison with reports before issue 13:", "",
                  "| model | Recall@20 | NDCG@20 |", "|---|---|---|"]
        for name in OTHER_PROTOCOL_MODELS:
            lines.append(f"| {name} | {_pm(r, f'ml100k_{OTHER_PROTOCOL}_{name}_recall_at_20')} | "
                         f"{_pm(r, f'ml100k_{OTHER_PROTOCOL}_{name}_ndcg_at_20')} |")
    lines += ["", "### Hyper-parameters (what `recstream train --data ml100k` uses by default)", "",
              "| model | training | model config | how chosen |", "|---|---|---|---|",
              *_hyper_rows(ml.get("hyper_parameters", {})), "",
              "The grid and every point's validation score: `reports/ml100k_tuning.md`.", ""]
    if "synthetic_n_test" in r:
        lines += [
            f"## Synthetic CTR: long-term interests invisible in the last 50 behaviours, mean ± std over "
            f"{int(r.get('synthetic_seeds', 0))} training seeds",
            "",
            f"{int(r['synthetic_n_test'])} test impressions (time split), the same world for every seed and model. Same "
            "network, only the long-term block differs: SDIM (SimHash buckets, m=48, tau=3), the exact attention SDIM "
            "approximates (weights (1 - angle/pi)^3, normalised, over all 500 behaviours), softmax target attention "
            "(cosine scores, learned scale, a null slot), or none.",
            "",
            "| model | AUC | GAUC | logloss | train s | epochs |",
            "|---|---|---|---|---|---|",
        ]
        for name, key, label in SYNTHETIC_MODELS:
            lines.append(f"| {label} | {_pm(r, 'synthetic_auc_' + key)} | {_pm(r, 'synthetic_gauc_' + key)} | "
                         f"{_pm(r, 'synthetic_logloss_' + key)} | {r[f'train_seconds_synthetic_{key}']:.1f} | "
                         f"{r[f'train_epochs_synthetic_{key}']:.1f} |")
        lines += [f"| oracle (true click probability) | {r['synthetic_auc_oracle']:.4f} | | | | |", "",
                  "Paired AUC differences (same test set, same seed): "
                  + "; ".join(f"SDIM − {label} {_pm(r, 'synthetic_auc_sdim_minus_' + o)}"
                              for o, label in (("collision_attention", "collision attention"),
                                               ("full_attention", "softmax attention"), ("din_last50", "DIN(last 50)")))
                  + ".", "",
                  "### Hyper-parameters (what `recstream train --data synthetic` uses by default)", "",
                  "| model | training | model config | how chosen |", "|---|---|---|---|",
                  *_hyper_rows(syn.get("hyper_parameters", {})), ""]
    lines += ["## Long-term interest for 500 candidates of one user (d=64, 1 thread)", "",
              "| L | SDIM bucket path ms | dot-product attention ms | DIN MLP attention ms | speed-up vs attention | speed-up vs DIN |",
              "|---|---|---|---|---|---|"]
    for L in lengths:
        lines.append(f"| {L:,} | {r[f'sdim_seconds_L{L}'] * 1e3:.3f} | {r[f'attention_seconds_L{L}'] * 1e3:.2f} | "
                     f"{r[f'din_attention_seconds_L{L}'] * 1e3:.1f} | {r[f'sdim_speedup_vs_attention_L{L}']:.1f}x | "
                     f"{r[f'sdim_speedup_vs_din_attention_L{L}']:.0f}x |")
    lines += ["", f"SDIM path = hash the 500 candidates + gather and normalise their buckets from the precomputed tables; "
              f"lookup alone (candidate signatures cached): {r['sdim_lookup_only_seconds'] * 1e3:.3f} ms.", "",
              "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for goal, measured, ok in goals(r):
        lines.append(f"| {goal} | {measured} | {'yes' if ok else 'NO'} |")
    lines += ["", "## Notes", "",
              "- Early stopping on the validation metric (Recall@20 or AUC) with each model's patience; the best epoch's "
              "weights are kept. The epoch columns are means over seeds; a mean equal to the cap means runs were still "
              "improving when they stopped.",
              "- The oracle AUC ranks impressions by their true click probability: no model can beat it on average.",
              "- Speed rows come from one process, one thread, medians of repeated calls (DIN at L=10,000: one call).",
              "- `reports/models_settings.json` holds every setting of the last run of each section.", ""]
    if r.get("train_seconds_ml100k_max_seed", 0) >= 180:
        lines.insert(-1, f"- The 3-minute goal for one seed's ML-100k training is missed: the two-tower's "
                     f"{r['train_seconds_ml100k_two_tower']:.0f} s (its validation-chosen settings run up to "
                     f"{int(defaults_for('two_tower', 'ml100k').train['epochs'])} epochs) and HCN's "
                     f"{r['train_seconds_ml100k_hcn']:.0f} s ({int(defaults_for('hcn', 'ml100k').train['epochs'])} "
                     "epochs) make up most of it.")
    (out_dir / "models.md").write_text("\n".join(lines))
