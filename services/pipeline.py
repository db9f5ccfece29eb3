"""The request path: variant -> inputs -> retrieval -> coarse -> fine -> slate -> response + log.

    variant    stable hash of (salt, user) -> the variant's model version for every stage
    inputs     history, user features, BSE tables: concurrently, each under its own deadline
    retrieval  two-tower top-N (+ popular items), seen and excluded items removed
    coarse     HCN, N -> M
    ranker     SDIM + DIN + DCNv2 over M: an ordering score and a click probability per candidate
    fusion     the final order: the stages' scores z-scored over the M candidates and blended with
               the variant's weights (scoring/fusion.py)
    slate      the variant's exploration policy picks k, with each item's true propensity

A variant may serve a prefix of the cascade (`cascade`: retrieval, coarse or ranker); the stages
after it do not run, so one HTTP measurement can compare the prefixes.

A failing or late step never fails the request; it falls back, and the answer says why
(`degraded_reasons`, and `recstream_degraded_total{stage, reason}`):
    retrieval fails -> popular items;   coarse fails -> retrieval order;
    ranker fails or is late -> coarse order;   BSE lacks the version -> no long-term interest;
    Feast down -> default user features;   item features down -> default item features.
A stage that fails several times in a row is skipped for a moment (services/breaker.py), so a
dead replica costs one deadline, not one per request.

Stages are awaited through `call_stage`, so the same code drives in-process stage objects
(fused layout) and Ray Serve deployment handles (split layout, batched ranker).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from recstream.events import ImpressionLog, LoggedRequest, ServedScores, SlateItem
from services import metrics as m
from services.api import RecommendRequest, RecommendResponse, ScoredItem, ScoreRequest, ScoreResponse
from services.batching import LocalBatcher
from services.breaker import CircuitBreaker
from services.config import ServeConfig, VariantConfig
from scoring.exploration import make_slate
from scoring.fusion import STAGES, FusionConfig, fuse, zstats
from services.inputs import InputSources
from services.stages import StageRequest, StageResult

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


async def call_stage(stage: Any, *args) -> Any:
    if hasattr(stage, "remote"):  # a DeploymentHandle (split layout)
        return await stage.remote(*args)
    if isinstance(stage, LocalBatcher):  # batches in this replica, off the event loop itself
        return await stage(*args)
    return await asyncio.to_thread(stage, *args)  # in-process (fused layout): off the event loop


@dataclass(frozen=True)
class VariantRuntime:
    """A variant with its versions resolved and what its models need as inputs.

    versions: stage -> concrete model version; sdim: the ranker's SDIM config dict (None: no
    long-term block); *_features: which stages take user / item feature vectors.
    """

    name: str
    config: VariantConfig
    versions: dict[str, str]
    sdim: Any = None
    user_features: bool = False
    item_features: bool = False
    model_names: dict[str, str] = field(default_factory=dict)
    fusion: FusionConfig = field(default_factory=FusionConfig)


class _Trace:
    """Timings and fallback reasons of one request."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.reasons: list[str] = []

    def degrade(self, stage: str, reason: str) -> None:
        self.reasons.append(f"{stage}:{reason}")
        m.DEGRADED.labels(stage, reason).inc()

    def record(self, stage: str, t_start: float) -> None:
        self.timings[stage] = round((time.perf_counter() - t_start) * 1000, 3)
        m.STAGE_LATENCY.labels(stage).observe(self.timings[stage] / 1000)


class Recommender:
    """The request path over injected stages and sources.

    Args:
        inputs: request-time sources (services/inputs.py).
        popular: fallback and merge source with `popular(n)` -> [(item, score)] (services.inputs.PopularItems).
        retrieval / coarse / ranker: stage objects or deployment handles (services/stages.py).
        variants: name -> VariantRuntime (set again on reconfigure).
        vectors: features.vectors-like module (user_feature_matrix, item_feature_matrix,
            default_user_features, default_item_features); None when no model uses features.
    """

    def __init__(self, config: ServeConfig, inputs: InputSources, popular: Any, retrieval: Any, coarse: Any,
                 ranker: Any, variants: dict[str, VariantRuntime], impression_logger=None, vectors: Any = None,
                 seed: int | None = None):
        self.config = config
        self.inputs = inputs
        self.popular = popular
        self.retrieval, self.coarse, self.ranker = retrieval, coarse, ranker
        self.impressions = impression_logger
        self.vectors = vectors
        self.rng = np.random.default_rng(seed)
        self.breakers = {s: CircuitBreaker(s, config.circuit_breaker) for s in ("retrieval", "coarse", "ranker")}
        self.set_variants(variants)

    def set_variants(self, variants: dict[str, VariantRuntime]) -> None:
        # one assignment each: a request sees the old set or the new one. The shares are the
        # variants' own (user_config), not the config the replica was built with.
        self.variants = dict(variants)
        self.variant_shares = {name: v.config.share for name, v in variants.items()}
        m.MODEL_VERSION.clear()
        for name, v in variants.items():
            for stage, version in v.versions.items():
                m.MODEL_VERSION.labels(name, stage, version).set(1)

    @property
    def model_versions(self) -> dict[str, dict[str, str]]:
        return {name: dict(v.versions) for name, v in self.variants.items()}

    # ---- building blocks ----------------------------------------------------------------------

    async def _source(self, tr: _Trace, name: str, fn: Callable, *args, default: Any = None) -> tuple[Any, bool]:
        """One input source under the inputs deadline. Returns (value, ok)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.config.deadlines.inputs_timeout_ms / 1000), True
        except asyncio.TimeoutError:
            tr.degrade(name, "deadline")
        except Exception as e:
            log.warning("input %s failed: %s: %s", name, type(e).__name__, e)
            tr.degrade(name, "unavailable")
        return default, False

    async def _stage(self, tr: _Trace, name: str, stage: Any, req: StageRequest, timeout_ms: float) -> StageResult | None:
        t = time.perf_counter()
        m.CANDIDATES_IN.labels(name).observe(len(req.items))
        breaker = self.breakers[name]
        if not breaker.allow():  # noticed dead a moment ago: fall back now instead of waiting out the deadline
            tr.degrade(name, "circuit_open")
            tr.record(name, t)
            return None
        try:
            res = await asyncio.wait_for(call_stage(stage, req), timeout_ms / 1000)
        except asyncio.TimeoutError:
            tr.degrade(name, "deadline")
            res = None
        except Exception as e:  # a failing stage degrades the answer; it never becomes a 5xx
            log.warning("stage %s failed: %s: %s", name, type(e).__name__, e)
            tr.degrade(name, "error")
            res = None
        if res is not None and res.error is not None:
            tr.degrade(name, "error")
            res = None
        breaker.success() if res is not None else breaker.failure()
        tr.record(name, t)
        if res is not None:
            m.CANDIDATES.labels(name).observe(len(res.items))
            for reason in res.reasons:
                tr.degrade(name, reason)
        return res

    def _user_vector(self, row: dict | None) -> np.ndarray:
        if row is None:
            return self.vectors.default_user_features(1)
        return self.vectors.user_vectors_from_raw(self.vectors.user_raw_from_rows([row]))

    async def _user_inputs(self, tr: _Trace, user_id: str, v: VariantRuntime, ranker: bool = True):
        """(history, user feature vector or None, BSE tables or None), fetched concurrently;
        ranker False: the ranker will not run, so its BSE tables are not read."""
        t = time.perf_counter()
        jobs = [self._source(tr, "history", self.inputs.history, user_id, self.config.history_len, default=[])]
        if v.user_features and self.config.user_feature_source == "feast":
            jobs.append(self._source(tr, "user_features", self.inputs.user_features, user_id))
        long_term = v.sdim is not None and ranker
        if long_term:
            jobs.append(self._source(tr, "bse", self.inputs.bse_tables, user_id, v.versions["ranker"], v.sdim))
        got = await asyncio.gather(*jobs)
        history = got[0][0]
        user_row = got[1][0] if v.user_features and self.config.user_feature_source == "feast" else None
        tables = None
        if long_term:
            tables, ok = got[-1]
            if ok and tables is None:  # the BSE does not hold this ranker version (yet)
                tr.degrade("bse", "version_missing")
        user_vec = self._user_vector(user_row) if v.user_features else None
        tr.record("inputs", t)
        return history, user_vec, tables

    async def _item_vectors(self, tr: _Trace, items: list[str], v: VariantRuntime) -> np.ndarray | None:
        if not v.item_features:
            return None
        raw, ok = await self._source(tr, "item_features", self.inputs.item_features, items)
        if not ok:
            return self.vectors.default_item_features(len(items))
        return self.vectors.item_feature_matrix(raw)

    async def _candidates(self, tr: _Trace, user_id: str, history: list[str], exclude: list[str],
                          v: VariantRuntime) -> tuple[list[tuple[str, float]], bool]:
        """(N candidates, whether retrieval answered): retrieval's best N - P and P popular items
        retrieval did not find (P = popular_merge_k: new and trending items the two-tower may miss),
        seen and excluded items removed; N popular items when retrieval failed."""
        c = self.config
        n = c.candidate_top_k
        # over-fetch by what filtering may remove, so N candidates remain
        want = n + c.history_len + len(exclude)
        res = await self._stage(tr, "retrieval", self.retrieval,
                                StageRequest(user_id, history, v.model_names["retrieval"], v.versions["retrieval"], top_k=want),
                                c.deadlines.candidates_timeout_ms)
        pool: list[tuple[str, float]] = []
        n_pop = c.popular_merge_k if res is not None else n  # popular items only, when retrieval failed
        if self.popular is not None and n_pop:
            try:
                pool = await asyncio.to_thread(self.popular.popular, n_pop + c.history_len + len(exclude))
            except Exception as e:
                log.warning("popular items unavailable: %s", e)
                tr.degrade("popular", "unavailable")
        banned = set(exclude) | set(history)
        retrieved = [(i, s) for i, s in (res.items if res is not None else []) if i not in banned]
        floor = min((s for _, s in retrieved), default=0.0)
        popular = [(i, floor) for i, _ in pool if i not in banned]  # scored below every retrieved item
        seen, ok = await self._source(tr, "seen", self.inputs.seen, user_id, [i for i, _ in retrieved + popular])
        if ok:  # one round trip for both lists
            n_r = len(retrieved)
            retrieved = [p for p, s in zip(retrieved, seen[:n_r]) if not s]
            popular = [p for p, s in zip(popular, seen[n_r:]) if not s]
        head = retrieved[: n - n_pop]
        in_head = {i for i, _ in head}
        popular = [p for p in popular if p[0] not in in_head][:n_pop]
        in_popular = {i for i, _ in popular}
        rest = [p for p in retrieved[len(head):] if p[0] not in in_popular]  # fills the slots popular could not
        return head + popular + rest[: n - len(head) - len(popular)], res is not None

    async def warm_up(self) -> None:
        """One request through every stage without logging it: the first call over a deployment
        handle and torch's first forward pass are slow, and no user should pay for them."""
        logger, self.impressions = self.impressions, None
        try:
            await self.recommend(RecommendRequest(user_id="__warm_up__", k=1))
        finally:
            self.impressions = logger

    # ---- the two endpoints --------------------------------------------------------------------

    async def recommend(self, req: RecommendRequest, variant: str | None = None,
                        log_impression: bool = True) -> RecommendResponse:
        """variant: serve this variant instead of the user's (replay); log_impression False: a
        replayed request, which must not enter the impression log as served traffic."""
        tr = _Trace()
        request_id = uuid.uuid4().hex
        variant = variant or assign_variant(req.user_id, self.config.experiment_salt, self.variant_shares)
        v = self.variants[variant]
        c = self.config
        history, user_vec, tables = await self._user_inputs(tr, req.user_id, v, ranker=v.config.cascade == "ranker")

        cands, retrieved = await self._candidates(tr, req.user_id, history, list(req.exclude), v)
        items = [i for i, _ in cands]
        stage_scores: dict[str, dict[str, float]] = {"retrieval": dict(cands)} if retrieved else {}
        item_vecs, row, like = None, {}, None
        if v.config.cascade == "retrieval":
            # by score, stably: merged popular items sit at the retrieved floor, after every higher score
            served = Served(sorted(cands, key=lambda p: -p[1]), "retrieval")
        else:
            item_vecs = await self._item_vectors(tr, items, v)
            row = {item: n for n, item in enumerate(items)}
            coarse = await self._stage(tr, "coarse", self.coarse,
                                       StageRequest(req.user_id, history, v.model_names["coarse"], v.versions["coarse"],
                                                    top_k=c.coarse_top_k, items=items, user_feats=user_vec, item_feats=item_vecs),
                                       c.deadlines.coarse_timeout_ms)
            if coarse is not None:
                stage_scores["coarse"] = dict(coarse.items)
            ordered = coarse.items if coarse is not None else cands[: c.coarse_top_k]  # fallback: retrieval order
            served = Served(ordered, "coarse" if coarse is not None else "retrieval")
            if v.config.cascade == "ranker":
                survivors = [i for i, _ in ordered]
                fine = await self._stage(tr, "ranker", self.ranker,
                                         StageRequest(req.user_id, history, v.model_names["ranker"], v.versions["ranker"],
                                                      top_k=len(survivors), items=survivors, user_feats=user_vec, tables=tables,
                                                      item_feats=None if item_vecs is None else item_vecs[[row[i] for i in survivors]]),
                                         c.deadlines.ranker_timeout_ms)
                if fine is not None:  # else: the coarse order stands
                    stage_scores["ranker"] = dict(fine.items)
                    like = dict(zip((i for i, _ in fine.items), fine.probabilities or ()))
                    served = fuse_stages(survivors, stage_scores, v.fusion)
        ranked = served.ranked

        slots = make_slate(ranked, req.k, v.config.exploration, self.rng)
        m.EXPLORED.labels(variant).inc(sum(s.explored for s in slots))
        tr.timings["total"] = round((time.perf_counter() - tr.t0) * 1000, 3)
        m.STAGE_LATENCY.labels("total").observe(tr.timings["total"] / 1000)
        m.REQUESTS.labels(variant).inc()
        resp = RecommendResponse(
            request_id=request_id, variant=variant,
            items=[ScoredItem(item_id=s.item_id, score=s.score, probability=like.get(s.item_id) if like else None)
                   for s in slots],
            model_versions=dict(v.versions), degraded=bool(tr.reasons), degraded_reasons=tr.reasons,
            timings_ms=tr.timings)
        if self.impressions is not None and log_impression:
            shown = [s.item_id for s in slots]
            ex = v.config.exploration
            support = [i for i, _ in ranked[: req.k + (ex.pool_size if ex.policy != "deterministic" else 0)]]
            self.impressions.log(ImpressionLog(
                request_id=request_id, user_id=req.user_id, ts=int(time.time() * 1000), variant=variant,
                model_versions=resp.model_versions, timings_ms=resp.timings_ms, degraded=resp.degraded,
                policy=ex.policy, exploration=ex.model_dump(),
                request=LoggedRequest(k=req.k, context=req.context, exclude=list(req.exclude)), support=support,
                slate=[SlateItem(item_id=s.item_id, position=p, score=s.score, propensity=s.propensity)
                       for p, s in enumerate(slots)],
                scores=served.log(support, stage_scores, like),
                features=self._served_features(history, user_vec, item_vecs, row, support, tables is not None),
            ))
        return resp

    def _served_features(self, history, user_vec, item_vecs, row, shown, long_term: bool) -> dict:
        """What the ranker saw, compactly: enough to rebuild its inputs for the shown items. The
        whole history the request read (history_len at most, a few hundred ids) rather than DIN's
        last 50: replay re-scoring another ranker version builds its SDIM tables from it, and a
        50-item tail gave back only 29% of the served greedy slots (reports/replay.md)."""
        out: dict[str, Any] = {"history_tail": list(history), "history_len": len(history), "long_term": long_term}
        if user_vec is not None:
            out["user"] = [round(float(x), 6) for x in user_vec[0]]
        if item_vecs is not None:
            out["items"] = {i: [round(float(x), 6) for x in item_vecs[row[i]]] for i in shown if i in row}
        return out

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """Fine-ranker scores of the given items (unknown items: the ranker's OOV rows)."""
        tr = _Trace()
        variant = assign_variant(req.user_id, self.config.experiment_salt, self.variant_shares)
        v = self.variants[variant]
        history, user_vec, tables = await self._user_inputs(tr, req.user_id, v)
        items = list(dict.fromkeys(req.item_ids))
        item_vecs = await self._item_vectors(tr, items, v)
        fine = await self._stage(tr, "ranker", self.ranker,
                                 StageRequest(req.user_id, history, v.model_names["ranker"], v.versions["ranker"],
                                              top_k=len(items), items=items, user_feats=user_vec, item_feats=item_vecs,
                                              tables=tables),
                                 self.config.deadlines.ranker_timeout_ms)
        scores = dict(zip((i for i, _ in fine.items), fine.probabilities or ())) if fine is not None else {}
        tr.timings["total"] = round((time.perf_counter() - tr.t0) * 1000, 3)
        return ScoreResponse(user_id=req.user_id, variant=variant, model_version=v.versions["ranker"],
                             scores={i: scores.get(i) for i in req.item_ids}, degraded=bool(tr.reasons),
                             degraded_reasons=tr.reasons, timings_ms=tr.timings)


@dataclass
class Served:
    """The order a request is served in and how it came about.

    ranked: (item, final score) best first, every candidate the order was chosen from (the coarse
    cut, or retrieval's N for the retrieval prefix); cascade: the last stage whose scores made
    it; fusion: the weights of the blend (empty when the order is one stage's own scores)."""

    ranked: list[tuple[str, float]]
    cascade: str
    fusion: dict[str, float] = field(default_factory=dict)

    def log(self, support: list[str], stage_scores: dict[str, dict[str, float]],
            like: dict[str, float] | None) -> ServedScores:
        """The support's scores, and every logged stage's (mean, std) over all the candidates, not
        only the support: the blend's own z-scores, and what replay needs to re-fuse the request
        with other weights, or another variant's fusion on a request a shorter cascade served."""
        final = dict(self.ranked)
        pool = [i for i, _ in self.ranked]
        logged = {s: sc for s, sc in stage_scores.items() if all(i in sc for i in pool)}
        stats = {s: [a.item() for a in zstats(np.asarray([sc[i] for i in pool], dtype=np.float64))]
                 for s, sc in logged.items()}
        return ServedScores(
            cascade=self.cascade, fusion=self.fusion, stats=stats,
            stages={s: [sc[i] for i in support] for s, sc in logged.items()},
            final=[final[i] for i in support],
            like=[like[i] for i in support] if like and all(i in like for i in support) else None)


def fuse_stages(items: list[str], stage_scores: dict[str, dict[str, float]], fusion: FusionConfig) -> Served:
    """The ranker cascade's final order over `items` (the coarse cut, in the order it came):
    scoring.fusion.fuse over the stages that answered. A weighted stage that did not answer is
    left out of the blend; when no weighted stage answered, the ranker's order alone."""
    w = {s: wt for s, wt in fusion.weights().items() if wt > 0 and s in stage_scores}
    if not w:
        w = {"ranker": 1.0}
    present = FusionConfig(**{f"{s}_weight": w.get(s, 0.0) for s in STAGES})
    total = fuse({s: np.asarray([stage_scores[s][i] for i in items], dtype=np.float64) for s in w}, present)  # (M,)
    order = np.argsort(-total, kind="stable")  # ties: the coarse order
    return Served([(items[i], float(total[i])) for i in order], "ranker", w)
