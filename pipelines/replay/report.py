"""One replay run: estimates for each evaluated policy, paired differences, optional traffic
replay, written as report.json, report.md and PNG plots."""

from __future__ import annotations

import itertools
import json
from collections import Counter
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipelines.replay import estimators as E
from pipelines.replay import traffic as T
from pipelines.replay.data import DEFAULT_REWARD_TYPES, ReplayLog, attribute, interactions_after
from pipelines.replay.policies import LoggedPolicy, SlatePolicy, VariantPolicy, build_rows
from pipelines.replay.reproduce import served_order_reproduced
from scoring.errors import ModelLoadError

log = logging.getLogger(__name__)

# Below this many effective samples in some slot an estimate is mostly a few heavy weights.
ESS_WARN = 100
# Below this share of the served greedy slots given back, replay is not evaluating what was served.
REPRODUCED_WARN = 0.99


@dataclass
class TrafficResult:
    variants: list[str]
    answers: list[T.Answer]
    k: int = 10


def run_replay(rlog: ReplayLog, candidates: list[SlatePolicy], out_dir: str | Path, direct_model=None,
               window_s: float = 3600.0, reward_types=DEFAULT_REWARD_TYPES, clip: float | None = None,
               n_boot: int = 500, seed: int = 0, traffic: TrafficResult | None = None, plots: bool = True,
               progress=None, served: Mapping[str, VariantPolicy] | None = None) -> dict:
    """served: logged variant -> the policy that replays it as served; with it the report says
    how much of the served greedy order replay gives back (`served_order_reproduced_share`)."""
    if not rlog.impressions:
        raise ValueError("no impressions in the chosen range: nothing to evaluate")
    rewards = attribute(rlog, window_s, reward_types)
    imps = rlog.impressions
    counts = E.bootstrap_counts(len(imps), n_boot, np.random.default_rng(seed))
    policies: list[SlatePolicy] = [LoggedPolicy(), *candidates]
    result: dict = {
        "n_impressions": len(imps), "n_slots": sum(len(i.slate) for i in imps), "n_rewarded_slots": len(rewards),
        "window_s": window_s, "reward_types": list(reward_types), "clip": clip, "n_boot": n_boot, "seed": seed,
        "skipped_records": rlog.skipped,
        "logging": {"policies": _count(i.policy for i in imps), "variants": _count(i.variant for i in imps),
                    "model_versions": _count(json.dumps(i.model_versions, sort_keys=True) for i in imps)},
        "policies": {}, "differences": {},
    }
    if served:
        try:
            rep = served_order_reproduced(imps, served)
        except (ModelLoadError, ValueError) as e:
            # records without stage scores need the served rankers' artefacts; their absence
            # costs this check, not the estimates
            log.warning("replay: served order reproduction unavailable: %s", e)
            rep = {"share": None, "error": str(e)}
        result["served_order_reproduced_share"] = rep["share"]
        result["served_reproduction"] = rep
        if rep["share"] is not None and rep["share"] < REPRODUCED_WARN:
            log.warning("replay: replaying the served variants gives back %.1f%% of their greedy slots (%s)",
                        100 * rep["share"], rep["paths"])
    estimates: dict[str, dict[str, E.Estimate]] = {}
    weight_samples: dict[str, np.ndarray] = {}
    it = progress(policies, desc="policies", unit="policy") if progress else policies
    for pol in it:
        built = build_rows(imps, rewards, pol, direct_model)
        ests = E.evaluate(built.rows, counts, clip=clip)
        estimates[pol.name] = ests
        ess = E.effective_sample_size(built.rows, clip)
        warnings = []
        if len(ess) and ess.min() < ESS_WARN and ess.min() < 0.5 * len(imps):
            warnings.append(f"effective sample size {ess.min():.0f} < {ESS_WARN} in slot {int(ess.argmin())}: the "
                            "estimate rests on a few heavily weighted slots (log more exploration traffic)")
        elif len(imps) < ESS_WARN:
            warnings.append(f"only {len(imps)} logged requests: the intervals are wide")
        if built.unsupported_mass > 0.01:
            warnings.append(f"{built.unsupported_mass:.1%} of this policy's slot probability is on items the logging "
                            "policy never shows there: IPS/SNIPS miss that reward (DR's model covers it)")
        for w in warnings:
            log.warning("replay: policy %s: %s", pol.name, w)
        w = E.weights(built.rows, clip)
        weight_samples[pol.name] = w
        result["policies"][pol.name] = {
            "estimates": {e: est.to_dict() for e, est in ests.items()},
            "ess_per_slot": ess.round(1).tolist(), "unsupported_mass": built.unsupported_mass,
            "direct_model_theta": built.theta, "weight_mean": float(w.mean()) if len(w) else 0.0,
            "weight_max": float(w.max()) if len(w) else 0.0, "warnings": warnings}
        if isinstance(pol, VariantPolicy):
            result["policies"][pol.name]["replay_paths"] = pol.paths(imps)
    for a, b in itertools.combinations([p.name for p in policies], 2):
        result["differences"][f"{b} - {a}"] = {
            e: E.paired_difference(estimates[a][e], estimates[b][e]).to_dict()
            for e in estimates[a] if e in estimates[b]}
    if traffic is not None:
        result["traffic"] = _traffic(rlog, traffic, window_s, reward_types, n_boot, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    if plots:
        _plots(out, estimates, weight_samples, traffic)
    (out / "report.md").write_text(markdown(result, plots))
    return result


def _count(xs) -> dict[str, int]:
    return dict(Counter(xs))


def _traffic(rlog: ReplayLog, tr: TrafficResult, window_s: float, reward_types, n_boot: int, seed: int) -> dict:
    relevant = interactions_after(rlog, window_s, reward_types)
    ids, per = T.per_request_metrics(tr.answers, relevant, tr.variants, tr.k)
    out: dict = {"variants": tr.variants, "k": tr.k, "n_requests": len({a.request_id for a in tr.answers}),
                 "n_with_outcomes": len(ids),
                 "latency": {v: T.latency_summary(tr.answers, v) for v in tr.variants},
                 "metrics": {v: {m: float(x.mean()) if len(x) else None for m, x in per[v].items()} for v in tr.variants},
                 "differences": {}}
    for a, b in itertools.combinations(tr.variants, 2):
        out["differences"][f"{b} - {a}"] = {m: T.paired_bootstrap(per[a][m], per[b][m], n_boot, seed) for m in per[a]}
    return out


def _plots(out: Path, estimates, weights, traffic: TrafficResult | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(estimates)
    ests = sorted({e for v in estimates.values() for e in v})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(names), 1)
    for n, name in enumerate(names):
        xs = np.arange(len(ests)) + n * width
        vals = [estimates[name][e].value if e in estimates[name] else np.nan for e in ests]
        lo = [estimates[name][e].value - estimates[name][e].ci_low if e in estimates[name] else 0 for e in ests]
        hi = [estimates[name][e].ci_high - estimates[name][e].value if e in estimates[name] else 0 for e in ests]
        ax.errorbar(xs, vals, yerr=[lo, hi], fmt="o", capsize=4, label=name)
    ax.set_xticks(np.arange(len(ests)) + width * (len(names) - 1) / 2, [e.upper() for e in ests])
    ax.set_ylabel("clicks per slate")
    ax.set_title("policy value estimates (95% bootstrap intervals)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "estimates.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, w in weights.items():
        pos = w[w > 0]
        if len(pos):
            ax.hist(np.log10(pos), bins=40, alpha=0.5, label=f"{name} ({np.mean(w == 0):.0%} zero)")
    ax.set_xlabel("log10 importance weight (non-zero)")
    ax.set_ylabel("logged slots")
    ax.set_title("importance weight distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "weights.png", dpi=110)
    plt.close(fig)

    if traffic is not None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for v in traffic.variants:
            lat = np.sort([a.latency_ms for a in traffic.answers if a.variant == v and a.status == 200])
            if len(lat):
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=v)
        ax.set_xlabel("latency (ms, client side)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("replayed request latency CDF")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=110)
        plt.close(fig)


def _counts(c: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items()))


def _reproduction_md(rep: dict) -> str:
    if "error" in rep:
        return f"Served order reproduced: unavailable ({rep['error']})."
    if rep["share"] is None:
        return "Served order reproduced: no greedy slot to check."
    by = ", ".join(f"{v} {x:.1%}" for v, x in rep["by_variant"].items())
    warn = "" if rep["share"] >= REPRODUCED_WARN else (" **Below 99%: the estimates describe policies that were "
                                                        "not served; log `scores` (a current server) to fix it.**")
    skipped = f"; skipped: {_counts(rep['skipped'])}" if rep["skipped"] else ""
    return (f"Served order reproduced: replaying each request with the variant that served it gives back "
            f"{rep['n_reproduced']:,} of {rep['n_greedy_slots']:,} logged greedy slots ({rep['share']:.1%}; {by}); "
            f"paths: {_counts(rep['paths'])}{skipped}.{warn}")


def _fmt(x: dict) -> str:
    return f"{x['value']:.4f} [{x['ci_low']:.4f}, {x['ci_high']:.4f}]"


def markdown(r: dict, plots: bool = True) -> str:
    lines = ["# Replay report", "",
             f"{r['n_impressions']:,} logged requests, {r['n_slots']:,} slots, {r['n_rewarded_slots']:,} with an outcome "
             f"({', '.join(r['reward_types'])} within {r['window_s']:.0f} s). Logging policies: {r['logging']['policies']}; "
             f"variants: {r['logging']['variants']}.", "",
             "Value = expected outcomes per slate, per-position estimators (see pipelines/replay/estimators.py); "
             f"95% percentile bootstrap intervals over {r['n_boot']} resamples of requests.", "",
             "| policy | IPS | SNIPS | DR | DM | min ESS/slot | unsupported |", "|---|---|---|---|---|---|---|"]
    for name, p in r["policies"].items():
        e = p["estimates"]
        cell = lambda k: _fmt(e[k]) if k in e else "—"  # noqa: E731
        ess = min(p["ess_per_slot"]) if p["ess_per_slot"] else 0
        lines.append(f"| {name} | {cell('ips')} | {cell('snips')} | {cell('dr')} | {cell('dm')} | {ess:,.0f} | "
                     f"{p['unsupported_mass']:.1%} |")
    if "served_reproduction" in r:
        lines += ["", _reproduction_md(r["served_reproduction"])]
    paths = {n: p["replay_paths"] for n, p in r["policies"].items() if "replay_paths" in p}
    if paths:
        lines += ["", "Replay paths (requests; logged = the served final order, fused = logged stage scores "
                      "re-fused, rescored = ranker re-computed from the logged inputs (approximate), no_scores = "
                      "record without stage scores, re-scored; proxy/missing = a stage's scores stood in or "
                      "were absent): " + "; ".join(f"{n}: {_counts(c)}" for n, c in paths.items()) + "."]
    lines += ["", "## Differences (paired: same resampled requests)", "",
              "| comparison | estimator | difference [95% CI] | p-value |", "|---|---|---|---|"]
    for name, d in r["differences"].items():
        for e, x in d.items():
            lines.append(f"| {name} | {e.upper()} | {_fmt(x)} | {x['p_value']:.3f} |")
    warn = [(n, w) for n, p in r["policies"].items() for w in p["warnings"]]
    if warn:
        lines += ["", "## Warnings", ""] + [f"- **{n}**: {w}" for n, w in warn]
    if "traffic" in r:
        t = r["traffic"]
        lines += ["", "## Traffic replay", "",
                  f"{t['n_requests']:,} logged requests re-sent to each of {', '.join(t['variants'])}; "
                  f"{t['n_with_outcomes']:,} of them have outcomes to rank against (metrics @ {t['k']}).", "",
                  "| variant | p50 ms | p95 ms | p99 ms | errors | degraded | hit | recall | NDCG |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v in t["variants"]:
            lat, m = t["latency"][v], t["metrics"][v]
            f = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
            lines.append(f"| {v} | {lat.get('p50_ms', float('nan')):.1f} | {lat.get('p95_ms', float('nan')):.1f} | "
                         f"{lat.get('p99_ms', float('nan')):.1f} | {lat['errors']} | {lat.get('degraded', 0)} | "
                         f"{f(m['hit'])} | {f(m['recall'])} | {f(m['ndcg'])} |")
        for name, d in t["differences"].items():
            for mname, x in d.items():
                if x["n"]:
                    lines.append(f"\n{name} {mname}: {_fmt(x)}, p = {x['p_value']:.3f} (n = {x['n']})")
    if plots:
        lines += ["", "![estimates](estimates.png)", "", "![weights](weights.png)"]
        if "traffic" in r:
            lines += ["", "![latency](latency_cdf.png)"]
    return "\n".join(lines) + "\n"
