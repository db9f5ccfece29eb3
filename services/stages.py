"""Serving stages: plain Python objects with a typed call.

The same objects run in-process inside the ingress replica (fused layout) or each behind its own
Ray Serve deployment (split layout); see services/app.py. A stage never raises for a dependency
outage: it returns what it can with `degraded=True` and a reason. The model stages hold every
model version their variants name (`load`), so a request names its version and a new version
is swapped in whole, never half loaded.

    retrieval  StageRequest(user, history, top_k=N)           -> N (item, two-tower score)
    coarse     StageRequest(..., items=N candidates, top_k=M) -> M (item, HCN score)
    ranker     StageRequest(..., items=M candidates)          -> all M (item, ordering score) + click probabilities
               RankerStage.batch([StageRequest, ...])         -> one StageResult each, one forward pass per version
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np

from scoring.config import ModelRef
from scoring.servables import RankerRequest

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    items: list[tuple[str, float]]  # (item_id, score), best first
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)
    version: str | None = None  # the model version that produced the scores
    error: str | None = None  # set by a stage deployment that failed: the ingress falls back
    probabilities: list[float] | None = None  # ranker: click probability of each of `items`, aligned


@dataclass
class StageRequest:
    """One request's inputs to a model stage (picklable: crosses deployments in the split layout).

    Args:
        model, version: which model artefact and version scores the request.
        items: (N,) candidate item ids (empty for retrieval).
        user_feats: (1, Fu) float32 user vector (features/vectors.py layout) or None.
        item_feats: (N, Fi) float32 item vectors aligned with `items`, or None.
        tables: (S, B, d) float32 BSE bucket sums for the ranker version, or None (no long-term).
    """

    user_id: str
    history: list[str]
    model: str
    version: str
    top_k: int
    items: list[str] = field(default_factory=list)
    user_feats: np.ndarray | None = None
    item_feats: np.ndarray | None = None
    tables: np.ndarray | None = None


S = TypeVar("S")


class _Versioned(Generic[S]):
    """Model versions by concrete version; `load` replaces the whole set at once.

    During a swap the ingress and a stage deployment take the new variants at slightly different
    moments, so a stage answers any version it can: the current set, the set it just replaced
    (kept until the next swap), or, as a last resort, the version loaded on demand.
    """

    def __init__(self, factory: Callable[[ModelRef], S]):
        self.factory = factory
        self.models: dict[str, S] = {}
        self._retired: dict[str, S] = {}

    def load(self, refs: list[ModelRef]) -> dict[str, str]:
        """Load every ref (reusing versions already loaded); returns ref version -> concrete version."""
        new: dict[str, S] = {}
        resolved: dict[str, str] = {}
        for ref in refs:
            model = self.factory(ref)  # resolves 'latest'; the factory caches loaded versions
            new[model.version] = model
            resolved[ref.version] = model.version
        self._retired, self.models = self.models, new  # a request sees the old set or the new one
        return resolved

    def get(self, name: str, version: str) -> S:
        model = self.models.get(version) or self._retired.get(version)
        if model is None:
            log.warning("%s %s/%s was not loaded: loading it on demand", type(self).__name__, name, version)
            model = self.factory(ModelRef(name=name, version=version))
        return model


class _ModelStage:
    """A stage over the model versions its variants name; subclasses score one StageRequest."""

    name = ""

    def __init__(self, factory: Callable[[ModelRef], S]):
        self.versions: _Versioned[S] = _Versioned(factory)


def _top(items: list[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(items[i], float(scores[i])) for i in order]


class RetrievalStage(_ModelStage):
    """Two-tower candidate generation (exact or HNSW top-N)."""

    name = "retrieval"

    def __call__(self, req: StageRequest) -> StageResult:
        model = self.versions.get(req.model, req.version)
        ids, scores = model.top_n(model.user_vector(req.user_id, req.history), req.top_k)
        return StageResult(items=list(zip(map(str, ids.tolist()), np.asarray(scores, dtype=np.float64).tolist())),
                           version=model.version)


class CoarseStage(_ModelStage):
    """HCN coarse ranking, N -> M."""

    name = "coarse"

    def __call__(self, req: StageRequest) -> StageResult:
        model = self.versions.get(req.model, req.version)
        scores = model.score(req.user_id, req.history, req.items, req.user_feats, req.item_feats)
        return StageResult(items=_top(req.items, scores, req.top_k), version=model.version)


def _ranked(req: StageRequest, order: np.ndarray, prob: np.ndarray, version: str) -> StageResult:
    best = np.argsort(-order, kind="stable")
    return StageResult(items=[(req.items[i], float(order[i])) for i in best], version=version,
                       probabilities=[float(prob[i]) for i in best])


def _ranker_request(req: StageRequest) -> RankerRequest:
    return RankerRequest(req.user_id, req.history, req.items, req.tables, req.user_feats, req.item_feats)


class RankerStage(_ModelStage):
    """SDIM + DIN + DCNv2 fine ranking: every candidate scored, best first."""

    name = "ranker"

    def __call__(self, req: StageRequest) -> StageResult:
        model = self.versions.get(req.model, req.version)
        order, prob = model.score_heads_batch([_ranker_request(req)])[0]
        return _ranked(req, order, prob, model.version)

    def batch(self, reqs: list[StageRequest]) -> list[StageResult]:
        """Each request's StageResult, the requests of one model version scored in ONE forward pass.

        Never raises: when a group's pass fails, its requests are scored one by one, so that a request
        whose inputs do not fit its model answers with `error` set and the others are answered."""
        out: list[StageResult | None] = [None] * len(reqs)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.model, r.version), []).append(i)
        for (name, version), idx in groups.items():
            try:
                model = self.versions.get(name, version)
                scores = model.score_heads_batch([_ranker_request(reqs[i]) for i in idx])
                for i, (order, prob) in zip(idx, scores):
                    out[i] = _ranked(reqs[i], order, prob, model.version)
            except Exception as e:
                if len(idx) > 1:
                    log.warning("%s: a batch of %d requests for %s/%s failed (%s: %s); scoring them one by one",
                                self.name, len(idx), name, version, type(e).__name__, e)
                for i in idx:
                    out[i] = self._alone(reqs[i])
        return out  # type: ignore[return-value]  # every index is set above

    def _alone(self, req: StageRequest) -> StageResult:
        try:
            return self(req)
        except Exception as e:  # answered as a failed stage, so the ingress falls back
            log.warning("%s failed for %s/%s: %s: %s", self.name, req.model, req.version, type(e).__name__, e)
            return StageResult(items=[], error=type(e).__name__)
