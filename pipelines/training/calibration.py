"""Platt scaling of a click / like head: p = sigmoid(scale * logit + bias), fitted on validation.

The listwise ranker's like head (models/ranker.py) is trained with BCE on candidate sets, where
every hard negative is a 0: its raw sigmoid is the probability under that sampling, not the
probability of the event /v1/score promises. Two parameters fitted by Newton's method on held-out
(logit, label) pairs map it onto the event's frequency without changing the order; the expected
calibration error (equal-mass bins) says how far off the raw and the scaled heads are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlattScaling:
    scale: float = 1.0
    bias: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.scale * np.asarray(logits, dtype=np.float64) + self.bias)))

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "bias": self.bias}


def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-4, max_iter: int = 50, tol: float = 1e-10) -> PlattScaling:
    """Maximum-likelihood (scale, bias) of sigmoid(scale * logit + bias) for labels in {0, 1}.

    Args:
        logits: (n,) raw head outputs; labels: (n,) 0/1 outcomes of the same rows.
        l2: a small ridge on (scale - 1, bias), so a split with one class stays finite.
    """
    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"fit_platt: logits {x.shape} and labels {y.shape} must be the same non-empty shape")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("fit_platt: labels must be 0 or 1")
    prior = np.array([1.0, 0.0])
    feats = np.stack([x, np.ones_like(x)], axis=1)  # (n, 2)

    def loss(w: np.ndarray) -> float:  # mean negative log-likelihood + ridge
        z = feats @ w
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum((w - prior) ** 2))

    w = prior.copy()  # (scale, bias): start at the raw head
    cur = loss(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(feats @ w)))
        grad = feats.T @ (p - y) / len(y) + l2 * (w - prior)  # (2,)
        hess = (feats * (p * (1 - p))[:, None]).T @ feats / len(y) + l2 * np.eye(2)  # (2, 2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while loss(w - t * step) > cur and t > 1e-6:  # damped: a full Newton step can overshoot far from the optimum
            t *= 0.5
        w, new = w - t * step, loss(w - t * step)
        if cur - new < tol:
            break
        cur = new
    return PlattScaling(float(w[0]), float(w[1]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Mean |frequency - mean probability| over equal-mass bins, weighted by bin size."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    order = np.argsort(p, kind="stable")
    err = 0.0
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            err += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(err / max(len(p), 1))
