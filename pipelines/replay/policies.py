"""Policies the replay tool evaluates, and the estimators' rows built from a log for one of them.

A policy gives, for a logged request, P(item @ slot) for every slot (`marginals`). The logging
policy's numbers come back from what the impression recorded (its support and exploration
parameters). A candidate ranker version re-ranks the logged support from what the ranker saw
when the request was served (the logged history tail, user and item feature vectors; long-term
interest from SDIM tables built over that tail, since the served tables are not logged), then
draws its slate with its own exploration config (deterministic by default).

The direct model of DR is a ranker's click probability s(x, a) times a position curve theta_p
fitted on the log (theta_p = clicks at p / sum of s over the items logged at p): the ranker
knows relevance, the log knows how often each slot is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.replay.estimators import SlotRows
from recstream.events import ImpressionLog
from scoring.config import ExplorationConfig, ModelRef
from scoring.exploration import marginals


class SlatePolicy(Protocol):
    name: str

    def marginals(self, imp: ImpressionLog) -> list[dict[str, float]]: ...


def support_of(imp: ImpressionLog) -> list[str]:
    """The ranked head the slate was drawn from; an old record without one has only its slate."""
    return list(imp.support) if imp.support else [s.item_id for s in imp.slate]


def logging_exploration(imp: ImpressionLog) -> ExplorationConfig:
    if imp.policy == "deterministic" or not imp.exploration:
        return ExplorationConfig()
    return ExplorationConfig(**imp.exploration)


class LoggedPolicy:
    """The policy that served the log (evaluating it checks the estimators: weights are all 1)."""

    name = "logged"

    def marginals(self, imp: ImpressionLog) -> list[dict[str, float]]:
        return marginals(support_of(imp), len(imp.slate), logging_exploration(imp))


class RankerScorer:
    """Click probabilities of a request's support items under one ranker version, from the log."""

    def __init__(self, ref: ModelRef, artifacts_dir: str | None):
        from scoring.servables import RankerServable

        self.servable = RankerServable(ref, artifacts_dir)
        self.version = self.servable.version
        self._cache: dict[str, dict[str, float]] = {}

    def scores(self, imp: ImpressionLog) -> dict[str, float]:
        got = self._cache.get(imp.request_id)
        if got is not None:
            return got
        from models.sdim import build_bucket_tables

        r = self.servable
        feats = imp.features or {}
        items = support_of(imp)
        hist = list(feats.get("history_tail") or [])
        tables = None
        if r.hasher is not None and hist:
            rows = r.vocabs["item"].encode(hist)
            tables, _ = build_bucket_tables(r.item_table[rows], r.hasher)
        user = np.asarray([feats["user"]], dtype=np.float32) if feats.get("user") is not None else None
        vecs = feats.get("items") or {}
        item_feats = None
        if vecs and all(i in vecs for i in items):
            item_feats = np.asarray([vecs[i] for i in items], dtype=np.float32)
        if (r.uses_user_features and user is None) or (r.uses_item_features and item_feats is None):
            raise ValueError(f"ranker {r.name}/{r.version} takes feature vectors, and impression {imp.request_id} did "
                             "not log them for its support (log from a server with this change, or pick another "
                             "ranker)")
        p = r.score(imp.user_id, hist, items, tables, user, item_feats)
        got = self._cache[imp.request_id] = dict(zip(items, p.astype(float).tolist()))
        return got


@dataclass
class RankerPolicy:
    """Re-rank the logged support by a ranker version; slate by `exploration` (deterministic)."""

    name: str
    scorer: RankerScorer
    exploration: ExplorationConfig = ExplorationConfig()

    def marginals(self, imp: ImpressionLog) -> list[dict[str, float]]:
        s = self.scorer.scores(imp)
        ranked = sorted(s, key=lambda i: -s[i])
        return marginals(ranked, len(imp.slate), self.exploration)


@dataclass
class Rows:
    """The estimators' input for one policy plus what the report says about coverage."""

    rows: SlotRows
    unsupported_mass: float  # mean over slots of the policy's probability on items the log never shows there
    theta: list[float]  # fitted position curve of the direct model (empty without one)


def build_rows(impressions: list[ImpressionLog], rewards: dict[tuple[str, int], float], policy: SlatePolicy,
               direct_model: RankerScorer | None = None) -> Rows:
    imp_idx, pos, reward, p0, pe, s_logged, s_target = [], [], [], [], [], [], []
    unsupported, n_slots = 0.0, 0
    logging = LoggedPolicy()
    for n, imp in enumerate(impressions):
        tm = policy.marginals(imp)
        lm = logging.marginals(imp)
        scores = direct_model.scores(imp) if direct_model is not None else None
        for s in imp.slate:
            p = s.position
            target = tm[p] if p < len(tm) else {}
            imp_idx.append(n)
            pos.append(p)
            reward.append(rewards.get((imp.request_id, p), 0.0))
            p0.append(s.propensity)
            pe.append(target.get(s.item_id, 0.0))
            unsupported += sum(q for a, q in target.items() if lm[p].get(a, 0.0) == 0.0)
            n_slots += 1
            if scores is not None:
                s_logged.append(scores.get(s.item_id, 0.0))
                s_target.append(sum(q * scores.get(a, 0.0) for a, q in target.items()))
    a = lambda x, t=float: np.asarray(x, dtype=t)  # noqa: E731
    position = a(pos, np.int64)
    rew = a(reward)
    dm_logged = dm_target = None
    theta: list[float] = []
    if direct_model is not None and n_slots:
        k = int(position.max()) + 1
        th = np.bincount(position, weights=rew, minlength=k) / np.maximum(
            np.bincount(position, weights=a(s_logged), minlength=k), 1e-12)
        theta = th.tolist()
        dm_logged, dm_target = th[position] * a(s_logged), th[position] * a(s_target)
    rows = SlotRows(impression=a(imp_idx, np.int64), position=position, reward=rew, pscore=a(p0), target_pscore=a(pe),
                    n_impressions=len(impressions), dm_logged=dm_logged, dm_target=dm_target)
    return Rows(rows, unsupported / max(n_slots, 1), theta)
