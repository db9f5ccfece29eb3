"""Off-policy estimators of a slate policy's value from a logged slate log, with bootstrap intervals.

Value of a policy = expected reward summed over the slots of one slate (clicks per request).
Every estimator here is per position (the independent-IPS family of Li et al. 2018 / obp's
`SlateIndependentIPS`): under a position-based click model a slot's click depends only on the
item and the slot, so each slot is its own bandit and

    IPS   V = 1/n  sum_i sum_p  w_ip r_ip                      w_ip = pi_e(a_ip @ p) / pi_0(a_ip @ p)
    SNIPS V = sum_p  (sum_i w_ip r_ip) / (sum_i w_ip)           (self-normalised per slot)
    DR    V = 1/n  sum_i sum_p  [ q_e(x_i, p) + w_ip (r_ip - q(x_i, a_ip, p)) ]
    DM    V = 1/n  sum_i sum_p  q_e(x_i, p)                    q_e = sum_a pi_e(a @ p) q(x_i, a, p)

with q a direct model of the click probability (the ranker's, scaled by a fitted position
curve). Weights may be clipped at `clip` (bias for variance).

Each estimator is written as a sum of ratios of per-impression sums, V = sum_j (sum_i num_ij) /
(sum_i den_ij), so one (B, n) matrix of bootstrap resampling counts gives every estimator's
bootstrap distribution by two matrix products, and the same counts pair two policies' estimates
(their difference's interval comes from the same resampled requests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("ips", "snips", "dr", "dm")


@dataclass(frozen=True)
class SlotRows:
    """One row per (logged impression, slot). N rows over n impressions.

    impression: (N,) int in [0, n); position: (N,) int slot; reward: (N,) click or 0;
    pscore: (N,) logging P(logged item @ slot) > 0; target_pscore: (N,) evaluated policy's
    P(logged item @ slot); dm_logged: (N,) q(x, logged item, slot); dm_target: (N,) q_e(x, slot).
    """

    impression: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    target_pscore: np.ndarray
    n_impressions: int
    dm_logged: np.ndarray | None = None
    dm_target: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_rows = len(self.impression)
        for name in ("position", "reward", "pscore", "target_pscore", "dm_logged", "dm_target"):
            a = getattr(self, name)
            if a is not None and len(a) != n_rows:
                raise ValueError(f"{name} has {len(a)} rows, impression has {n_rows}")
        if n_rows and (self.pscore.min() <= 0 or self.pscore.max() > 1):
            raise ValueError(f"logging propensities must be in (0, 1]; got min {self.pscore.min()}, max {self.pscore.max()}")
        if n_rows and (self.impression.min() < 0 or self.impression.max() >= self.n_impressions):
            raise ValueError(f"impression index out of [0, {self.n_impressions})")

    @property
    def n_slots(self) -> int:
        return int(self.position.max()) + 1 if len(self.position) else 0


@dataclass(frozen=True)
class Terms:
    """V = sum_j (sum_i num[i, j]) / (sum_i den[i, j]): num, den (n, J)."""

    num: np.ndarray
    den: np.ndarray

    def value(self, counts: np.ndarray | None = None) -> np.ndarray | float:
        """counts None: the estimate; counts (B, n): B bootstrap replicates (B,)."""
        if counts is None:
            return float(np.sum(self.num.sum(0) / _safe(self.den.sum(0))))
        return (counts @ self.num / _safe(counts @ self.den)).sum(1)


def _safe(x):
    return np.where(x == 0, np.inf, x)  # an empty slot contributes 0, not NaN


def weights(rows: SlotRows, clip: float | None = None) -> np.ndarray:
    """(N,) importance weights pi_e / pi_0, clipped at `clip` when given."""
    w = rows.target_pscore / rows.pscore
    return np.minimum(w, clip) if clip is not None else w


def _per_impression(rows: SlotRows, values: np.ndarray) -> np.ndarray:
    return np.bincount(rows.impression, weights=values, minlength=rows.n_impressions)[:, None]  # (n, 1)


def _per_slot(rows: SlotRows, values: np.ndarray) -> np.ndarray:
    out = np.zeros((rows.n_impressions, rows.n_slots))
    np.add.at(out, (rows.impression, rows.position), values)
    return out  # (n, L)


def terms(rows: SlotRows, estimator: str, clip: float | None = None) -> Terms:
    n = rows.n_impressions
    ones = np.ones((n, 1))
    w = weights(rows, clip)
    if estimator == "ips":
        return Terms(_per_impression(rows, w * rows.reward), ones)
    if estimator == "snips":
        return Terms(_per_slot(rows, w * rows.reward), _per_slot(rows, w))
    if estimator in ("dr", "dm"):
        if rows.dm_logged is None or rows.dm_target is None:
            raise ValueError(f"{estimator} needs a direct model: dm_logged and dm_target")
        if estimator == "dm":
            return Terms(_per_impression(rows, rows.dm_target), ones)
        return Terms(_per_impression(rows, rows.dm_target + w * (rows.reward - rows.dm_logged)), ones)
    if estimator == "logged":  # the logging policy's own average reward (on-policy)
        return Terms(_per_impression(rows, rows.reward), ones)
    raise ValueError(f"unknown estimator {estimator!r}; estimators: {ESTIMATORS + ('logged',)}")


def effective_sample_size(rows: SlotRows, clip: float | None = None) -> np.ndarray:
    """(L,) Kish's effective sample size of each slot's weights: (sum w)^2 / sum w^2."""
    w = weights(rows, clip)
    s1 = np.bincount(rows.position, weights=w, minlength=rows.n_slots)
    s2 = np.bincount(rows.position, weights=w * w, minlength=rows.n_slots)
    return np.where(s2 > 0, s1 * s1 / np.where(s2 > 0, s2, 1), 0.0)


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) how often each impression is drawn in each of B resamples of size n."""
    out = np.empty((n_boot, n), dtype=np.float64)
    for b in range(n_boot):
        out[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return out


@dataclass
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    boot: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def with_interval(t: Terms, counts: np.ndarray, level: float = 0.95) -> Estimate:
    """Percentile bootstrap interval."""
    boot = t.value(counts)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(t.value(), float(lo), float(hi), boot)


@dataclass
class Difference:
    """b - a on the same resampled requests."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value}


def paired_difference(a: Estimate, b: Estimate, level: float = 0.95) -> Difference:
    """Interval and two-sided bootstrap p-value of b - a; both estimates from the same counts.

    The p-value is the smallest two-sided level at which the percentile interval excludes 0:
    2 * min(P*(diff <= 0), P*(diff >= 0)), floored at 1/B (B replicates cannot say less)."""
    d = b.boot - a.boot
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    tail = min(np.mean(d <= 0), np.mean(d >= 0))
    return Difference(b.value - a.value, float(lo), float(hi), float(min(1.0, max(2 * tail, 1 / len(d)))))


def evaluate(rows: SlotRows, counts: np.ndarray, estimators=ESTIMATORS, clip: float | None = None,
             level: float = 0.95) -> dict[str, Estimate]:
    have_dm = rows.dm_logged is not None and rows.dm_target is not None
    return {e: with_interval(terms(rows, e, clip), counts, level) for e in estimators if have_dm or e not in ("dr", "dm")}
