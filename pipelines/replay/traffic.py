"""Traffic replay: logged requests sent again, in time order, to chosen variants of a running server.

Each request goes to every variant (the `X-Recstream-Replay: <variant>` header picks it; the
server does not log these as impressions), so the comparison is paired. The send rate is held
under `rate_per_s` by a start-time schedule, and at most `max_in_flight` requests are
outstanding, so a replay cannot flood a shared server.

The server answers from its state now: replaying long after the log against a live stack lets
the interactions that followed into the users' histories and seen-sets (clicked items are then
filtered out). For ranking metrics, replay against a stack whose state is as of the log (a shadow
deployment, or before the outcomes are applied), as `recstream demo` does.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from recstream.events import ImpressionLog


@dataclass
class Answer:
    request_id: str  # the logged request's id
    variant: str
    status: int
    items: list[str] = field(default_factory=list)
    latency_ms: float = 0.0  # client-side, send to full response
    server_ms: float | None = None  # the server's timings_ms.total
    degraded: bool = False


def replay_requests(url: str, impressions: list[ImpressionLog], variants: list[str], rate_per_s: float = 20.0,
                    max_in_flight: int = 4, timeout_s: float = 10.0, progress=None) -> list[Answer]:
    if rate_per_s <= 0 or max_in_flight < 1:
        raise ValueError(f"rate_per_s must be > 0 and max_in_flight >= 1; got {rate_per_s}, {max_in_flight}")
    return asyncio.run(_replay(url, impressions, variants, rate_per_s, max_in_flight, timeout_s, progress))


def _body(imp: ImpressionLog) -> dict:
    r = imp.request
    body: dict = {"user_id": imp.user_id, "k": r.k if r is not None else len(imp.slate)}
    if r is not None and r.context:
        body["context"] = r.context
    if r is not None and r.exclude:
        body["exclude"] = r.exclude
    return body


async def _replay(url, impressions, variants, rate_per_s, max_in_flight, timeout_s, progress) -> list[Answer]:
    order = sorted(impressions, key=lambda i: (i.ts, i.request_id))
    jobs = [(imp, v) for imp in order for v in variants]
    sem = asyncio.Semaphore(max_in_flight)
    bar = progress(total=len(jobs), desc="replay", unit="req") if progress else None
    t0 = time.monotonic()

    async def one(n: int, imp: ImpressionLog, variant: str, client: httpx.AsyncClient) -> Answer:
        # request n may start no earlier than n / rate: the rate bound holds whatever the latency
        await asyncio.sleep(max(0.0, t0 + n / rate_per_s - time.monotonic()))
        async with sem:
            t = time.perf_counter()
            try:
                resp = await client.post("/v1/recommend", json=_body(imp), headers={"X-Recstream-Replay": variant})
                ms = (time.perf_counter() - t) * 1000
                if resp.status_code != 200:
                    return Answer(imp.request_id, variant, resp.status_code, latency_ms=ms)
                j = resp.json()
                return Answer(imp.request_id, variant, 200, [i["item_id"] for i in j["items"]], ms,
                              j.get("timings_ms", {}).get("total"), bool(j.get("degraded")))
            except httpx.HTTPError:
                return Answer(imp.request_id, variant, 0, latency_ms=(time.perf_counter() - t) * 1000)
            finally:
                if bar is not None:
                    bar.update(1)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        out = await asyncio.gather(*(one(n, imp, v, client) for n, (imp, v) in enumerate(jobs)))
    if bar is not None:
        bar.close()
    return list(out)


# ---- ranking metrics against what the users did next ------------------------------------------

def ranking_metrics(items: list[str], relevant: set[str], k: int) -> dict[str, float]:
    """hit@k, recall@k and NDCG@k (binary gains) of one answer."""
    top = items[:k]
    hits = [1.0 if i in relevant else 0.0 for i in top]
    if not relevant:
        return {"hit": 0.0, "recall": 0.0, "ndcg": 0.0}
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    ideal = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
    return {"hit": float(any(hits)), "recall": sum(hits) / min(len(relevant), k), "ndcg": dcg / ideal}


def per_request_metrics(answers: list[Answer], relevant: dict[str, set[str]], variants: list[str],
                        k: int) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Requests every variant answered and that have an outcome; variant -> metric -> (n,) values
    in the same request order (pairs)."""
    by = {(a.request_id, a.variant): a for a in answers}
    ids = sorted({a.request_id for a in answers})
    ids = [r for r in ids if relevant.get(r) and all(by.get((r, v)) and by[(r, v)].status == 200 for v in variants)]
    out: dict[str, dict[str, np.ndarray]] = {}
    for v in variants:
        ms = [ranking_metrics(by[(r, v)].items, relevant[r], k) for r in ids]
        out[v] = {m: np.asarray([x[m] for x in ms]) for m in ("hit", "recall", "ndcg")}
    return ids, out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of b - a over the same requests, its percentile interval and two-sided p-value."""
    d = b - a
    if len(d) == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    boot = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    tail = min(np.mean(boot <= 0), np.mean(boot >= 0))
    return {"value": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(min(1.0, max(2 * tail, 1 / n_boot))), "n": int(len(d))}


def latency_summary(answers: list[Answer], variant: str) -> dict:
    ok = [a.latency_ms for a in answers if a.variant == variant and a.status == 200]
    errors = sum(1 for a in answers if a.variant == variant and a.status != 200)
    degraded = sum(1 for a in answers if a.variant == variant and a.degraded)
    if not ok:
        return {"n": 0, "errors": errors}
    p = np.percentile(ok, [50, 95, 99])
    return {"n": len(ok), "errors": errors, "degraded": degraded, "p50_ms": float(p[0]), "p95_ms": float(p[1]),
            "p99_ms": float(p[2]), "mean_ms": float(np.mean(ok))}
