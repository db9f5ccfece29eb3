"""The request path: variant -> candidates -> (rankers, as they land) -> response + impression log.

Stages are awaited through a small adapter so the same code drives in-process stage objects
(fused layout) and Ray Serve deployment handles (split layout).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any

from recstream.events import ImpressionLog, SlateItem
from services import metrics as m
from services.api import RecommendRequest, RecommendResponse, ScoredItem
from services.config import ServeConfig
from services.stages import StageResult

log = logging.getLogger(__name__)


def assign_variant(user_id: str, salt: str, variants: dict[str, float]) -> str:
    """Stable across processes and restarts: a hash of (salt, user), never Python's hash()."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, share in sorted(variants.items()):
        acc += share
        if h < acc:
            return name
    return sorted(variants)[-1]


async def call_stage(stage: Any, *args) -> StageResult:
    if hasattr(stage, "remote"):  # a DeploymentHandle (split layout)
        return await stage.remote(*args)
    return await asyncio.to_thread(stage, *args)  # in-process (fused layout); Redis I/O off the event loop


class Recommender:
    def __init__(self, config: ServeConfig, candidates: Any, impression_logger=None):
        self.config = config
        self.candidates = candidates
        self.impressions = impression_logger
        for stage, version in config.model_versions.items():
            m.MODEL_VERSION.labels(stage, version).set(1)

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex
        variant = assign_variant(req.user_id, self.config.experiment_salt, self.config.variants)
        timings: dict[str, float] = {}
        deadline_s = self.config.deadlines.candidates_timeout_ms / 1000
        ts = time.perf_counter()
        try:
            cand = await asyncio.wait_for(call_stage(self.candidates, req.user_id, req.k, req.exclude), deadline_s)
        except asyncio.TimeoutError:
            cand = StageResult(items=[], degraded=True, reasons=["deadline"])
        except Exception as e:  # a failing stage degrades the answer; it never becomes a 5xx
            log.exception("stage candidates failed for request %s", request_id)
            cand = StageResult(items=[], degraded=True, reasons=[type(e).__name__])
        timings["candidates"] = (time.perf_counter() - ts) * 1000
        m.STAGE_LATENCY.labels("candidates").observe(timings["candidates"] / 1000)
        m.CANDIDATES.labels("candidates").observe(len(cand.items))
        for reason in cand.reasons:
            m.DEGRADED.labels("candidates", reason).inc()

        items = cand.items[: req.k]
        timings["total"] = (time.perf_counter() - t0) * 1000
        m.STAGE_LATENCY.labels("total").observe(timings["total"] / 1000)
        m.REQUESTS.labels(variant).inc()
        resp = RecommendResponse(
            request_id=request_id,
            items=[ScoredItem(item_id=i, score=s) for i, s in items],
            variant=variant,
            model_versions=dict(self.config.model_versions),
            degraded=cand.degraded,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )
        if self.impressions is not None:
            self.impressions.log(ImpressionLog(
                request_id=request_id, user_id=req.user_id, ts=int(time.time() * 1000), variant=variant,
                model_versions=resp.model_versions, timings_ms=resp.timings_ms, degraded=resp.degraded,
                # The popularity policy is deterministic: each shown item had probability 1 at its slot.
                slate=[SlateItem(item_id=i, position=p, score=s, propensity=1.0) for p, (i, s) in enumerate(items)],
            ))
        return resp
