"""Policies the replay tool evaluates, and the estimators' rows built from a log for one of them.

A policy gives, for a logged request, P(item @ slot) for every slot (`marginals`). The logging
policy's numbers come back from what the impression recorded (its support and exploration
parameters). A candidate ranker version re-ranks the logged support from what the ranker saw
when the request was served (the logged history tail, user and item feature vectors; long-term
interest from SDIM tables built over that tail, since the served tables are not logged), then
draws its slate with its own exploration config (deterministic by default).

A served variant (`VariantPolicy`: its stages' versions, cascade and fusion) is replayed from
what the impression logged about its order (`ImpressionLog.scores`) whenever it can be, since
re-scoring from the logged inputs does not give back what was served (the served SDIM tables
and a history longer than the logged tail are not in the log): see `VariantPolicy`.

The direct model of DR is a ranker's click probability s(x, a) times a position curve theta_p
fitted on the log (theta_p = clicks at p / sum of s over the items logged at p): the ranker
knows relevance, the log knows how often each slot is looked at.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal, Mapping, Protocol

import numpy as np

from pipelines.replay.estimators import SlotRows
from recstream.events import ImpressionLog, ServedScores
from scoring.config import ExplorationConfig, ModelRef
from scoring.exploration import marginals
from scoring.fusion import STAGES, FusionConfig, fuse_with_stats, manifest_fusion

Stage = Literal["retrieval", "coarse", "ranker"]

# The artefact each stage loads when a version is named without its model (VariantConfig's defaults).
STAGE_MODELS = {"retrieval": "two_tower", "coarse": "hcn", "ranker": "ranker"}


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
    """One ranker version's scores of a request's support items, from the log.

    `heads` re-computes (order scores, click probabilities) from what the ranker saw when the
    request was served (history tail, feature vectors; SDIM tables rebuilt from the tail). `scores`
    (the click probability DR's direct model wants) takes the logged probabilities instead when
    the request was served by this very version: they are what the server computed, the rebuilt
    inputs only approximate them.
    """

    def __init__(self, ref: ModelRef, artifacts_dir: str | None):
        from scoring.servables import RankerServable

        self.servable = RankerServable(ref, artifacts_dir)
        self.name = self.servable.name
        self.version = self.servable.version
        self.fusion = manifest_fusion(self.servable.manifest)  # what a variant naming no fusion serves with it
        self._cache: dict[str, tuple[dict[str, float], dict[str, float]]] = {}

    def scores(self, imp: ImpressionLog) -> dict[str, float]:
        sc = imp.scores
        if sc is not None and sc.like is not None and imp.model_versions.get("ranker") == self.version:
            return dict(zip(support_of(imp), sc.like))
        return self.heads(imp)[1]

    def heads(self, imp: ImpressionLog) -> tuple[dict[str, float], dict[str, float]]:
        """({item: order score}, {item: click probability}) of the support, re-computed."""
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
        order, like = r.score_heads(imp.user_id, hist, items, tables, user, item_feats)  # (S,) each
        got = self._cache[imp.request_id] = (dict(zip(items, order.astype(float).tolist())),
                                             dict(zip(items, like.astype(float).tolist())))
        return got


class RankerScorers:
    """RankerScorer per (model, version), loaded on first use: a replay of logs that carry their
    scores may never need one."""

    def __init__(self, artifacts_dir: str | None):
        self.artifacts_dir = artifacts_dir
        self._loaded: dict[tuple[str, str], RankerScorer] = {}

    def get(self, ref: ModelRef) -> RankerScorer:
        key = (ref.name, ref.version)
        if key not in self._loaded:
            self._loaded[key] = RankerScorer(ref, self.artifacts_dir)
        return self._loaded[key]


@dataclass
class RankerPolicy:
    """Re-rank the logged support by a ranker version's click probability alone (how servers
    ordered before fusion); slate by `exploration` (deterministic). `--candidate` in the CLI.
    A served variant, fusion and all, is VariantPolicy's."""

    name: str
    scorer: RankerScorer
    exploration: ExplorationConfig = ExplorationConfig()

    def marginals(self, imp: ImpressionLog) -> list[dict[str, float]]:
        s = self.scorer.scores(imp)
        ranked = sorted(s, key=lambda i: -s[i])
        return marginals(ranked, len(imp.slate), self.exploration)


ReplayPath = Literal["logged", "fused", "rescored", "no_scores"]


@dataclass(frozen=True)
class Ranking:
    """A policy's order of one request's support, and how replay got it.

    path: logged (the served `final` order: same versions and fusion as served), fused (the
    logged stage scores re-fused, exact on the support), rescored (the ranker's order scores
    re-computed from the logged inputs, an approximation), no_scores (a record from before
    `ImpressionLog.scores`: RankerPolicy's re-scoring). notes: approximations on the way,
    "proxy:STAGE" (that stage's logged scores stand for another version's), "missing:STAGE"
    (the stage did not run or failed when the request was served, left out of the fusion) and
    "history_cut" (re-scored from a history tail shorter than what the server saw).
    """

    items: list[str]  # the support, best first
    path: ReplayPath
    notes: tuple[str, ...] = ()


class VariantPolicy:
    """A whole served variant: its stages' versions, the last stage that orders (cascade) and the
    fusion of the stages' scores; the slate drawn by `exploration` (deterministic by default).

    For a request that logged `scores`, the support is ordered, most exact first:

    1. logged: every stage up to `cascade` has the version the request was served with and the
       fusion is the logged one -> the logged `final` order, i.e. the served greedy slate itself.
    2. fused: the stages' versions as served, another fusion or cascade -> the logged stage
       scores blended with `scoring.fusion.fuse_with_stats` and the logged means and stds over
       all the fused candidates: the scores serving would have given these items, exactly.
    3. rescored: another ranker version (or a ranker the served request lacks) -> that ranker's
       order scores re-computed from the logged inputs (`RankerScorer.heads`), the other stages'
       logged scores kept. An approximation twice over: the inputs are rebuilt (SDIM tables from
       the logged 50-item tail, not the served tables), and the new ranker's mean and std over
       all the fused candidates are unknown, since only the support was logged. A shift of one
       stage's z-scores moves every item alike, so only the std matters; it is estimated as the
       new scores' std over the support times the served ranker's (std over the candidates) /
       (std over the support), i.e. assuming the support is as much narrower than the candidates
       under the new ranker as it was under the served one.

    Every order is of the logged support only: an item the new policy would have put on top
    from outside the support is invisible to replay (the logged support is what has coverage).
    A retrieval or coarse version other than the served one cannot be re-scored from the log;
    its logged scores stand in for it (noted "proxy:STAGE" and counted in the report), and the
    candidate set stays the served one. For a request without `scores` the ranker re-ranks the
    support by its click probability, as RankerPolicy does (path no_scores).

    Args:
        name: the policy's name in the report.
        versions: stage -> ModelRef or version string (model: the stage's default artefact); a
            stage left out keeps the version each request was served with.
        fusion: the weights of the ranker cascade's final order; None: as a variant that names
            none is served (services/runtime.py): the fusion each request logged when its ranker
            is the served one, else the other ranker artefact's own (`manifest_fusion`).
        cascade: the last stage that orders (retrieval and coarse order by their own scores).
        exploration: how the policy draws its slate from its order.
        scorers: where ranker versions come from when one must be re-scored (None: never
            allowed; a request that needs it raises).
        path: "auto" (the most exact way above), or force "fusion" (never the logged `final`)
            or "rescore" (the ranker always re-computed): how exact each way is, measured.
    """

    def __init__(self, name: str, versions: Mapping[str, ModelRef | str] | None = None,
                 fusion: FusionConfig | None = None, cascade: Stage = "ranker",
                 exploration: ExplorationConfig = ExplorationConfig(), scorers: RankerScorers | None = None,
                 path: Literal["auto", "fusion", "rescore"] = "auto"):
        if cascade not in STAGES:
            raise ValueError(f"variant policy {name!r}: cascade {cascade!r} is not one of {STAGES}")
        if fusion is not None and cascade != "ranker":
            raise ValueError(f"variant policy {name!r}: a fusion orders the ranker cascade only (cascade {cascade!r}, "
                             f"fusion {fusion.weights()})")
        if path not in ("auto", "fusion", "rescore"):
            raise ValueError(f"variant policy {name!r}: path {path!r} is not one of auto, fusion, rescore")
        self.name = name
        self.versions = {s: _stage_ref(name, s, v) for s, v in (versions or {}).items()}
        self.fusion = fusion
        self.cascade = cascade
        self.exploration = exploration
        self.scorers = scorers
        self.path = path
        self._cache: dict[str, Ranking] = {}

    def marginals(self, imp: ImpressionLog) -> list[dict[str, float]]:
        return marginals(self.ranking(imp).items, len(imp.slate), self.exploration)

    def ranking(self, imp: ImpressionLog) -> Ranking:
        got = self._cache.get(imp.request_id)
        if got is None:
            got = self._cache[imp.request_id] = self._rank(imp)
        return got

    def paths(self, impressions: list[ImpressionLog]) -> dict[str, int]:
        """How many requests went each way, and how many needed each approximation."""
        c: Counter[str] = Counter()
        for imp in impressions:
            r = self.ranking(imp)
            c[r.path] += 1
            c.update(r.notes)
        return dict(c)

    # ---- one request ---------------------------------------------------------------------------

    def _rank(self, imp: ImpressionLog) -> Ranking:
        items = support_of(imp)
        sc = imp.scores
        if sc is None:
            like = self._scorer(imp, "it logged no scores").scores(imp)
            return Ranking(sorted(items, key=lambda i: -like[i]), "no_scores")
        if len(sc.final) != len(items) or any(len(x) != len(items) for x in sc.stages.values()):
            raise ValueError(f"impression {imp.request_id}: scores not aligned with its {len(items)} support items "
                             f"(final {len(sc.final)}, stages { {s: len(x) for s, x in sc.stages.items()} })")
        weights = self._weights(imp)
        if self.path == "auto" and self._as_served(imp, weights):
            return Ranking(_by(items, np.asarray(sc.final)), "logged")
        x: dict[str, np.ndarray] = {}
        stats: dict[str, tuple[float, float]] = {}
        notes: list[str] = []
        rescored = False
        for s in weights:
            differs = self._differs(imp, s)
            if s == "ranker" and (differs or self.path == "rescore" or s not in sc.stages):
                x[s], stats[s] = self._rescore(imp, sc, items)
                rescored = True
                if _history_cut(imp):
                    notes.append("history_cut")
            elif s in sc.stages:
                x[s] = np.asarray(sc.stages[s], dtype=np.float64)
                if s in sc.stats:
                    stats[s] = (sc.stats[s][0], sc.stats[s][1])
                if differs:
                    notes.append(f"proxy:{s}")
            else:
                notes.append(f"missing:{s}")
        path: ReplayPath = "rescored" if rescored else "fused"
        if not x:  # none of the stages it weighs ran when the request was served
            return Ranking(_by(items, np.asarray(sc.final)), path, tuple(notes))
        if len(x) == 1:  # one stage's own order: its raw scores, no z-score needed
            return Ranking(_by(items, next(iter(x.values()))), path, tuple(notes))
        return Ranking(_by(items, fuse_with_stats(x, stats, {s: weights[s] for s in x})), path, tuple(notes))

    def _weights(self, imp: ImpressionLog) -> dict[str, float]:
        """stage -> weight (> 0) of this policy's order of the request. Without a fusion of its
        own the policy serves as a variant naming none does: the served request's fusion with
        the served ranker, another ranker version's own (chosen on validation, in its manifest)."""
        sc = imp.scores
        if self.cascade != "ranker":
            return {self.cascade: 1.0}
        if self.fusion is not None:
            w = self.fusion.weights()
        elif self._differs(imp, "ranker"):
            w = self._scorer(imp, "its fusion").fusion.weights()
        else:
            w = sc.fusion if sc.cascade == "ranker" and sc.fusion else {"ranker": 1.0}
        return {s: float(v) for s, v in w.items() if v > 0}

    def _as_served(self, imp: ImpressionLog, weights: dict[str, float]) -> bool:
        sc = imp.scores
        served = {s: float(v) for s, v in sc.fusion.items() if v > 0} or {sc.cascade: 1.0}
        upto = STAGES[: STAGES.index(self.cascade) + 1]  # each stage up to the cascade shaped the order
        return sc.cascade == self.cascade and weights == served and not any(self._differs(imp, s) for s in upto)

    def _differs(self, imp: ImpressionLog, stage: str) -> bool:
        want = self.versions.get(stage)
        return want is not None and want.version != imp.model_versions.get(stage)

    def _scorer(self, imp: ImpressionLog, why: str) -> RankerScorer:
        ref = self.versions.get("ranker")
        if ref is None:
            served = imp.model_versions.get("ranker")
            if served is None:
                raise ValueError(f"variant policy {self.name!r}: impression {imp.request_id} names no ranker version "
                                 f"(model_versions {imp.model_versions}) and the policy none either; cannot re-score")
            ref = ModelRef(name=STAGE_MODELS["ranker"], version=served)
        if self.scorers is None:
            raise ValueError(f"variant policy {self.name!r} must re-score impression {imp.request_id} with "
                             f"{ref.name}/{ref.version} ({why}) and was given no ranker artefacts (scorers)")
        return self.scorers.get(ref)

    def _rescore(self, imp: ImpressionLog, sc: ServedScores, items: list[str]) -> tuple[np.ndarray, tuple[float, float]]:
        """(S,) the ranker's order scores of the support and their (mean, estimated std over the
        candidates): see the class docstring, point 3."""
        order = self._scorer(imp, "another ranker version, or the served request lacks the ranker").heads(imp)[0]
        x = np.asarray([order[i] for i in items], dtype=np.float64)
        std = float(x.std())
        served = sc.stages.get("ranker")
        if served is not None and "ranker" in sc.stats and np.std(served) > 0:
            std *= sc.stats["ranker"][1] / float(np.std(served))
        return x, (float(x.mean()), std)

    @classmethod
    def from_log(cls, name: str, impressions: list[ImpressionLog], variant: str, scorers: RankerScorers | None = None,
                 versions: Mapping[str, ModelRef | str] | None = None, fusion: FusionConfig | None = None,
                 cascade: Stage | None = None, exploration: ExplorationConfig = ExplorationConfig(),
                 path: Literal["auto", "fusion", "rescore"] = "auto") -> "VariantPolicy":
        """Variant `variant` as the log shows it served (the most frequent versions, cascade and
        fusion among its requests that logged scores, else among all its requests), with any of
        them replaced by the arguments given."""
        mine = [i for i in impressions if i.variant == variant]
        if not mine:
            seen = sorted({i.variant for i in impressions})
            raise ValueError(f"variant {variant!r} served none of the {len(impressions)} logged requests "
                             f"(variants logged: {seen})")
        scored = [i for i in mine if i.scores is not None] or mine
        key = lambda i: (tuple(sorted(i.model_versions.items())), i.scores.cascade if i.scores else "ranker",  # noqa: E731
                         tuple(sorted(i.scores.fusion.items())) if i.scores else ())
        (served_versions, served_cascade, served_fusion), _ = Counter(key(i) for i in scored).most_common(1)[0]
        cascade = cascade or served_cascade
        if fusion is None and cascade == "ranker" and served_cascade == "ranker" and served_fusion:
            logged = dict(served_fusion)  # a stage the log leaves out weighs 0 (FusionConfig's ranker default is 1)
            fusion = FusionConfig(**{f"{s}_weight": float(logged.get(s, 0.0)) for s in STAGES})
        merged: dict[str, ModelRef | str] = {s: v for s, v in served_versions if s in STAGES}
        merged.update(versions or {})
        return cls(name, merged, fusion, cascade, exploration, scorers, path)


def _stage_ref(policy: str, stage: str, v: ModelRef | str) -> ModelRef:
    if stage not in STAGES:
        raise ValueError(f"variant policy {policy!r}: unknown stage {stage!r} in versions; stages: {STAGES}")
    ref = v if isinstance(v, ModelRef) else ModelRef(name=STAGE_MODELS[stage], version=v)
    if ref.version == "latest":  # the log holds concrete versions; 'latest' would never match one
        raise ValueError(f"variant policy {policy!r}: {stage} version 'latest' cannot be compared with the logged "
                         "versions; name the version")
    return ref


def _history_cut(imp: ImpressionLog) -> bool:
    """The server saw more history than the log kept: re-computed ranker inputs miss some."""
    feats = imp.features or {}
    return int(feats.get("history_len") or 0) > len(feats.get("history_tail") or [])


def _by(items: list[str], score: np.ndarray) -> list[str]:
    """items best first by score; ties keep the logged (served) order."""
    return [items[j] for j in np.argsort(-score, kind="stable")]


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
