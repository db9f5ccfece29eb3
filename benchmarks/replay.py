"""`recstream bench replay`: the estimators' accuracy and interval coverage against the
simulator's exact policy values, and the replay tool's throughput on its full path.

1. One log of n impressions goes through everything a real replay does: records serialised as
   the serving log and the events topic hold them, parsed, clicks attributed to slots, rows
   built for the evaluated policy, IPS/SNIPS/DR with bootstrap intervals. Its wall time gives
   replay_requests_per_s (logged requests evaluated per second).
2. `reps` more logs of the same size through the array path (equal numbers, tested) give the
   mean relative error of each estimator and how often the 95% intervals cover the truth.
3. The simulator is not the product's request path, so whether replay gives back what was served
   is measured on impressions the REAL path logs (`services.runtime.local_recommender` with small
   random models, in-memory inputs and an in-memory impression logger; two variants, one with a
   non-trivial fusion and epsilon_slate exploration): `served_order_reproduced_share`, replaying
   each request with its variant as configured (pipelines/replay/reproduce.py), and the same share
   with re-fusion forced (the logged stage scores and stats instead of the logged final order) and
   with the ranker forced to be re-scored from the logged inputs (what a new ranker version gets).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines.replay import data as D
from pipelines.replay import estimators as E
from pipelines.replay.policies import build_rows
from pipelines.replay.simulator import SimConfig, SimPolicy, SimScorer, Simulator, to_records

KEYS = ("ips", "snips", "dr")

# Replay's ways of ordering a served request (VariantPolicy's `path`), each measured on the real path.
REPLAY_PATHS = {"auto": "served_order_reproduced_share", "fusion": "served_order_reproduced_share_fused",
                "rescore": "served_order_reproduced_share_rescored"}


class _Collected:
    """An impression logger that keeps the records, as they come back from the topic (bytes
    round trip), so replay reads what a Kafka consumer would."""

    def __init__(self):
        from recstream.events import ImpressionLog

        self._parse = ImpressionLog.model_validate_json
        self.records: list = []

    def log(self, record) -> bool:
        self.records.append(self._parse(record.to_bytes()))
        return True


class _Popular:
    def __init__(self, items: list[str]):
        self.items = items

    def popular(self, n: int) -> list[tuple[str, float]]:
        return [(i, float(len(self.items) - k)) for k, i in enumerate(self.items[:n])]


def real_path_variants():
    """Two variants of the same artefacts: A fuses all three stages and explores (epsilon_slate),
    B orders by the ranker alone, deterministically."""
    from scoring.config import ExplorationConfig, ModelRef
    from scoring.fusion import FusionConfig
    from services.config import VariantConfig

    refs = dict(retrieval=ModelRef(name="two_tower", version="bench"), coarse=ModelRef(name="hcn", version="bench"),
                ranker=ModelRef(name="ranker", version="bench"))
    return {"A": VariantConfig(share=0.5, **refs, fusion=FusionConfig(retrieval_weight=0.6, coarse_weight=0.4),
                               exploration=ExplorationConfig(policy="epsilon_slate", epsilon=0.3, pool_size=10)),
            "B": VariantConfig(share=0.5, **refs, fusion=FusionConfig())}


def served_reproduction(n_requests: int = 300, n_items: int = 400, n_users: int = 60, hist_len: int = 120,
                        served_history_len: int = 50, k: int = 10, seed: int = 0, progress=None) -> dict:
    """Impressions from the real request path, replayed with the variants that served them.

    Histories (hist_len) are longer than the window a request reads and logs (served_history_len,
    ServeConfig.history_len) and the served SDIM tables are built over all of them, as the BSE
    does: the re-scoring path meets the same information loss as on a real log. Returns the three shares (REPLAY_PATHS), the paths each took, and counts."""
    from benchmarks.serving import save_bench_models
    from models.sdim import build_bucket_tables
    from pipelines.replay.policies import RankerScorers, VariantPolicy
    from pipelines.replay.reproduce import served_order_reproduced
    from scoring.config import ModelRef
    from scoring.servables import RankerServable
    from services.api import RecommendRequest
    from services.config import ServeConfig
    from services.inputs import InMemoryInputs
    from services.runtime import local_recommender

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="recstream-replay-bench-") as tmp:
        root = Path(tmp)
        save_bench_models(root, n_items=n_items, n_users=n_users, seed=seed)
        users = [f"b{u}" for u in range(n_users)]
        histories = {u: [f"i{j}" for j in rng.integers(0, n_items, hist_len)] for u in users}
        ranker = RankerServable(ModelRef(name="ranker", version="bench"), str(root))
        tables = {(u, "bench"): build_bucket_tables(ranker.item_table[ranker.vocabs["item"].encode(h)], ranker.hasher)[0]
                  for u, h in histories.items()} if ranker.hasher is not None else {}
        variants = real_path_variants()
        # deadlines far from the production ones: a shared CPU must not degrade requests at random
        config = ServeConfig(artifacts_dir=str(root), candidate_top_k=150, coarse_top_k=50, max_k=20,
                             popular_pool_size=100, popular_merge_k=5, history_len=served_history_len,
                             user_feature_source="none", variants=variants,
                             deadlines={"inputs_timeout_ms": 10_000, "candidates_timeout_ms": 10_000,
                                        "coarse_timeout_ms": 10_000, "ranker_timeout_ms": 10_000})
        logger = _Collected()
        rec = local_recommender(config, InMemoryInputs(histories=histories, tables=tables),
                                popular=_Popular([f"i{j}" for j in range(n_items - 30, n_items)]),
                                impressions=logger, seed=seed)
        t0 = time.perf_counter()
        it = progress(range(n_requests), desc="real path", unit="req") if progress else range(n_requests)
        for n in it:
            asyncio.run(rec.recommend(RecommendRequest(user_id=users[n % n_users], k=k)))
        serve_s = time.perf_counter() - t0
        imps = logger.records
        scorers = RankerScorers(str(root))
        out: dict = {"n_requests": len(imps), "history_len": hist_len, "logged_history_tail": served_history_len,
                     "n_degraded": sum(i.degraded for i in imps),
                     "n_with_scores": sum(i.scores is not None for i in imps), "serve_wall_s": serve_s}
        for path, key in REPLAY_PATHS.items():
            served = {v: VariantPolicy(f"{v} as configured", rec.variants[v].versions, cfg.fusion, cfg.cascade,
                                       scorers=scorers, path=path) for v, cfg in variants.items()}
            rep = served_order_reproduced(imps, served)
            out[key] = rep["share"]
            out[f"{key}_by_variant"] = rep["by_variant"]
            out[f"{key}_paths"] = rep["paths"]
            out["n_greedy_slots"] = rep["n_greedy_slots"]
        out["n_slots"] = sum(len(i.slate) for i in imps)
        return out


def run(out_dir: str | Path = "reports", n: int = 100_000, reps: int = 30, n_boot: int = 200, seed: int = 0,
        config: SimConfig | None = None, real_path_requests: int = 300) -> dict:
    cfg = config or SimConfig(seed=seed)
    sim = Simulator(cfg)
    target = sim.policy(noise=0.3)  # a better ranker than the logging one (noise 1.0)
    truth, logged_truth = sim.true_value(target), sim.true_value(sim.logging)

    lg = sim.log(n, seed=0)
    imps, events = to_records(lg)
    raw_i, raw_e = [i.to_bytes() for i in imps], [e.to_bytes() for e in events]
    t0 = time.perf_counter()
    rlog = D.parse_records(raw_i, raw_e)
    rewards = D.attribute(rlog)
    built = build_rows(rlog.impressions, rewards, SimPolicy(sim, target), SimScorer(sim))
    counts = E.bootstrap_counts(n, n_boot, np.random.default_rng(seed))
    full = E.evaluate(built.rows, counts, estimators=KEYS)
    wall_s = time.perf_counter() - t0

    errs = {e: [] for e in KEYS}
    covered = {e: 0 for e in KEYS}
    for r in tqdm(range(reps), desc="coverage", unit="log"):
        rows = sim.log(n, seed=1 + r).rows(target)
        c = E.bootstrap_counts(n, n_boot, np.random.default_rng(1 + r))
        for e, est in E.evaluate(rows, c, estimators=KEYS).items():
            errs[e].append(abs(est.value - truth) / truth)
            covered[e] += est.ci_low <= truth <= est.ci_high
    ess = E.effective_sample_size(built.rows)
    real = served_reproduction(real_path_requests, seed=seed, progress=lambda xs, **kw: tqdm(xs, **kw)) \
        if real_path_requests else None
    report = {
        "n_impressions": n,
        "snips_rel_error": float(np.mean(errs["snips"])),
        "dr_rel_error": float(np.mean(errs["dr"])),
        "ips_rel_error": float(np.mean(errs["ips"])),
        "ci_coverage_95": float(np.mean([covered[e] / reps for e in KEYS])),
        "replay_requests_per_s": n / wall_s,
        **{f"ci_coverage_95_{e}": covered[e] / reps for e in KEYS},
        **{f"{e}_rel_error_full_path": abs(full[e].value - truth) / truth for e in KEYS},
        **{f"{e}_ci_width_rel": (full[e].ci_high - full[e].ci_low) / truth for e in KEYS},
        "true_value_target": truth, "true_value_logging": logged_truth,
        "full_path_wall_s": wall_s, "coverage_reps": reps, "n_boot": n_boot,
        "ess_min_per_slot": float(ess.min()), "slots": cfg.k, "support": cfg.support_size,
        "logging_policy": f"{cfg.policy} epsilon={cfg.epsilon}", "seed": seed,
    }
    if real is not None:
        report.update({key: real[key] for key in REPLAY_PATHS.values()})
        report["real_path"] = real
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "replay.md").write_text(_markdown(report, full, truth))
    return report


def _markdown(r: dict, full: dict, truth: float) -> str:
    lines = [
        "# Replay: off-policy estimators against exact simulated policy values", "",
        f"Simulator: {r['slots']} slots, support {r['support']} items, position-based clicks, logging policy "
        f"{r['logging_policy']}; evaluated policy: a less noisy re-ranking of the support. True value "
        f"{truth:.4f} clicks per slate (logging policy {r['true_value_logging']:.4f}).", "",
        f"Errors and coverage: mean over {r['coverage_reps']} independent logs of {r['n_impressions']:,} impressions, "
        f"{r['n_boot']} bootstrap resamples each.", "",
        "| estimator | mean relative error | 95% interval coverage | full-path estimate [95% CI] |",
        "|---|---|---|---|",
    ]
    for e in KEYS:
        f = full[e]
        lines.append(f"| {e.upper()} | {r[f'{e}_rel_error']:.4f} | {r[f'ci_coverage_95_{e}']:.2f} | "
                     f"{f.value:.4f} [{f.ci_low:.4f}, {f.ci_high:.4f}] |")
    lines += ["", f"Full replay path (parse records, attribute clicks, build rows, estimate with intervals): "
                  f"{r['replay_requests_per_s']:,.0f} logged requests/s ({r['full_path_wall_s']:.1f} s for "
                  f"{r['n_impressions']:,}). Smallest per-slot effective sample size: {r['ess_min_per_slot']:,.0f}.", ""]
    if "real_path" in r:
        lines += _real_path_markdown(r["real_path"])
    return "\n".join(lines)


def _real_path_markdown(x: dict) -> list[str]:
    f = lambda v: "—" if v is None else f"{v:.1%}"  # noqa: E731
    lines = ["## Served order reproduced (the real request path)", "",
             f"{x['n_requests']:,} requests served by services.runtime.local_recommender (random models, "
             f"{x['history_len']}-item histories of which the log keeps the last {x['logged_history_tail']}; variant A "
             f"fuses the three stages and explores with epsilon_slate, B orders by the ranker alone); "
             f"{x['n_with_scores']:,} logged their stage scores, {x['n_degraded']:,} degraded. Each request replayed "
             f"with its variant as configured; share of the {x['n_greedy_slots']:,} logged greedy slots (of "
             f"{x['n_slots']:,}) whose item comes back:", "",
             "| replay path | reproduced | by variant | requests by path |", "|---|---|---|---|"]
    for path, key in REPLAY_PATHS.items():
        by = ", ".join(f"{v} {f(s)}" for v, s in x[f"{key}_by_variant"].items())
        paths = ", ".join(f"{p} {c:,}" for p, c in sorted(x[f"{key}_paths"].items()))
        lines.append(f"| {path} | {f(x[key])} | {by} | {paths} |")
    lines += ["", "auto: the most exact way the log allows (the logged final order); fusion: the logged stage "
                  "scores re-fused with the logged stats; rescore: the ranker re-computed from the logged inputs "
                  "(50-item history tail, SDIM tables rebuilt from it), as for another ranker version. "
                  "no_scores: records without stage scores, re-scored by the ranker's click probability.", ""]
    return lines
