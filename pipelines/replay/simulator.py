"""A slate simulator whose policy values are known exactly: the ground truth for the estimators.

Users and items have planted latent factors; a user clicks an item shown at slot p with
probability theta_p * rel(u, a) (a position-based click model: theta_p = 1 / (p + 1)^eta is the
chance the slot is looked at, rel the chance a looked-at item is clicked). The logging policy is
the serving exploration (`scoring.exploration`, epsilon_slate by default) over a noisy model's
ranking; the support of a request is that ranking's top k + pool_size. An evaluated policy
re-ranks the support with its own (less or more noisy) scores, as the replay tool does with a
candidate ranker, so its true value is

    V(pi) = 1/U sum_u sum_p sum_{a in S_u} pi(a @ p | u) theta_p rel(u, a)

computed exactly, while the estimators see only n logged slates with sampled clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.replay.estimators import SlotRows
from scoring.config import ExplorationConfig
from scoring.exploration import marginals


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 2000
    n_items: int = 400
    dim: int = 8
    k: int = 5  # slots per slate
    pool_size: int = 10  # support = top k + pool_size of the logging ranking
    policy: str = "epsilon_slate"
    epsilon: float = 0.3
    eta: float = 1.0  # position bias exponent
    base_logit: float = -1.0
    signal: float = 2.0  # spread of the true logits
    logging_noise: float = 1.0  # sd of the logging model's score error (in logit units)
    dm_noise: float = 0.3  # sd of the direct model's error
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.pool_size < 0 or self.k + self.pool_size > self.n_items:
            raise ValueError(f"need 1 <= k and k + pool_size <= n_items; got k={self.k}, pool_size={self.pool_size}, "
                             f"n_items={self.n_items}")

    @property
    def support_size(self) -> int:
        return self.k + self.pool_size

    @property
    def exploration(self) -> ExplorationConfig:
        return ExplorationConfig(policy=self.policy, epsilon=self.epsilon, pool_size=max(1, self.pool_size))


def slot_marginals(order: np.ndarray, k: int, exploration: ExplorationConfig) -> np.ndarray:
    """(U, k, M) P(support item s @ slot p) of a policy that ranks each user's M support items
    in `order` (U, M) (order[u, j] = support index at the policy's rank j) and draws its slate
    with `exploration`. The propensities depend only on ranks, so `scoring.exploration.marginals`
    (the one definition the logger and the replay tool use) is called once on the ranks 0..M-1
    and its (k, M) table is scattered to every user's support order."""
    u, m = order.shape
    rank_probs = np.zeros((k, m))  # P(policy's rank-j item @ slot p)
    for p, slot in enumerate(marginals(list(range(m)), k, exploration)):
        for j, prob in slot.items():
            rank_probs[p, j] = prob
    out = np.zeros((u, k, m))
    out[np.arange(u)[:, None, None], np.arange(k)[None, :, None], order[:, None, :]] = rank_probs[None]
    return out


class Simulator:
    def __init__(self, config: SimConfig = SimConfig()):
        c = self.config = config
        rng = np.random.default_rng(c.seed)
        users = rng.normal(size=(c.n_users, c.dim))
        items = rng.normal(size=(c.n_items, c.dim))
        bias = rng.normal(0, 0.5, size=c.n_items)
        self.logits = c.signal * users @ items.T / np.sqrt(c.dim) + bias + c.base_logit  # (U, I)
        self.theta = 1.0 / (np.arange(c.k) + 1.0) ** c.eta  # (k,)
        logging_scores = self.logits + rng.normal(0, c.logging_noise, size=self.logits.shape)
        self.support = np.argsort(-logging_scores, axis=1)[:, : c.support_size]  # (U, M) item ids, logging order
        self.rel = _sigmoid(np.take_along_axis(self.logits, self.support, 1))  # (U, M) true click | looked at
        # the direct model: the true logits seen through noise, as a trained ranker would
        self.dm_rel = _sigmoid(np.take_along_axis(self.logits, self.support, 1)
                               + rng.normal(0, c.dm_noise, size=self.support.shape))  # (U, M)
        self.logging = slot_marginals(np.tile(np.arange(c.support_size), (c.n_users, 1)), c.k, c.exploration)

    def policy(self, noise: float, exploration: ExplorationConfig | None = None, seed: int = 1) -> np.ndarray:
        """(U, k, M) marginals of a policy re-ranking the support by true logits + N(0, noise)."""
        rng = np.random.default_rng([self.config.seed, seed])
        scores = np.take_along_axis(self.logits, self.support, 1) + rng.normal(0, noise, size=self.support.shape)
        return slot_marginals(np.argsort(-scores, axis=1), self.config.k, exploration or ExplorationConfig())

    def true_value(self, marginals: np.ndarray) -> float:
        """Expected clicks per slate, exactly."""
        return float(np.einsum("ups,p,us->", marginals, self.theta, self.rel) / self.config.n_users)

    def log(self, n: int, seed: int) -> "SimulatedLog":
        """n slates drawn by the logging policy for uniformly drawn users, with sampled clicks."""
        c = self.config
        rng = np.random.default_rng([c.seed, 1000 + seed])
        users = rng.integers(0, c.n_users, size=n)
        # drawn the way the serving policy draws them (slot marginals alone would allow duplicates)
        slates = np.tile(np.arange(c.k), (n, 1))  # (n, k) support indices
        if c.policy == "epsilon_slate":
            explore = rng.random(n) < c.epsilon
            keys = rng.random((int(explore.sum()), c.support_size))
            slates[explore] = np.argsort(keys, axis=1)[:, : c.k]
        elif c.policy == "epsilon_slot":
            for i in range(n):  # rarely used in benchmarks; clear over fast
                ex = rng.random(c.k) < c.epsilon
                draw = rng.choice(np.arange(c.k, c.support_size), size=int(ex.sum()), replace=False)
                slates[i, ex] = draw
        pos = np.tile(np.arange(c.k), n)  # (n*k,)
        imp = np.repeat(np.arange(n), c.k)
        s = slates.reshape(-1)
        u = users[imp]
        pscore = self.logging[u, pos, s]
        clicks = (rng.random(n * c.k) < self.theta[pos] * self.rel[u, s]).astype(float)
        return SimulatedLog(self, users, imp, pos, s, pscore, clicks)


@dataclass
class SimulatedLog:
    sim: Simulator
    users: np.ndarray  # (n,)
    impression: np.ndarray  # (N,)
    position: np.ndarray  # (N,)
    support_index: np.ndarray  # (N,) which support item was shown
    pscore: np.ndarray  # (N,)
    reward: np.ndarray  # (N,)

    def rows(self, marginals: np.ndarray) -> SlotRows:
        """The estimators' input for an evaluated policy; the direct model's position curve
        fitted on this log (theta_p = clicks at p / predicted relevance at p)."""
        u = self.users[self.impression]
        dm = self.sim.dm_rel  # (U, M)
        pred = dm[u, self.support_index]
        k = self.sim.config.k
        theta = np.bincount(self.position, weights=self.reward, minlength=k) / np.maximum(
            np.bincount(self.position, weights=pred, minlength=k), 1e-12)
        target = marginals[u, self.position]  # (N, M)
        return SlotRows(impression=self.impression, position=self.position, reward=self.reward, pscore=self.pscore,
                        target_pscore=target[np.arange(len(u)), self.support_index], n_impressions=len(self.users),
                        dm_logged=theta[self.position] * pred,
                        dm_target=theta[self.position] * np.einsum("nm,nm->n", target, dm[u]))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- the same log as the platform's records, for the replay tool's full path ----------------

def to_records(lg: SimulatedLog, start_ms: int = 1_750_000_000_000):
    """(impressions, click events) as the serving log and the events topic would hold them."""
    from recstream.events import Event, ImpressionLog, SlateItem

    sim, c = lg.sim, lg.sim.config
    k = c.k
    exploration = c.exploration.model_dump()
    imps, events = [], []
    for i, u in enumerate(lg.users.tolist()):
        rows = slice(i * k, (i + 1) * k)
        support = [f"i{a}" for a in sim.support[u].tolist()]
        slate = [SlateItem(item_id=support[s], position=p, score=0.0, propensity=float(q))
                 for p, s, q in zip(lg.position[rows].tolist(), lg.support_index[rows].tolist(), lg.pscore[rows].tolist())]
        ts = start_ms + 10 * i
        imps.append(ImpressionLog(request_id=f"sim-{i}", user_id=f"u{u}", ts=ts, variant="A", model_versions={},
                                  timings_ms={}, policy=c.policy, exploration=exploration, support=support, slate=slate))
        for p, r in zip(lg.position[rows].tolist(), lg.reward[rows].tolist()):
            if r:
                events.append(Event(event_id=f"c-{i}-{p}", user_id=f"u{u}", item_id=slate[p].item_id, type="click",
                                    ts=ts + 1000, request_id=f"sim-{i}", position=p))
    return imps, events


class SimPolicy:
    """A simulator policy (its (U, k, M) marginals) answering the replay tool's policy interface."""

    def __init__(self, sim: Simulator, marginals: np.ndarray, name: str = "target"):
        self.sim, self.m, self.name = sim, marginals, name

    def marginals(self, imp) -> list[dict[str, float]]:
        u = int(imp.user_id[1:])
        ids = [f"i{a}" for a in self.sim.support[u].tolist()]
        return [{ids[s]: float(q) for s, q in enumerate(row) if q > 0} for row in self.m[u]]


class SimScorer:
    """The simulator's direct model behind the replay tool's scorer interface."""

    def __init__(self, sim: Simulator):
        self.sim = sim

    def scores(self, imp) -> dict[str, float]:
        u = int(imp.user_id[1:])
        return {f"i{a}": float(q) for a, q in zip(self.sim.support[u].tolist(), self.sim.dm_rel[u].tolist())}
