"""Evaluation metrics: retrieval Recall@K / NDCG@K over the full catalogue; ranking AUC, GAUC, logloss."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.data.datasets import Samples


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties counted half. NaN if only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC over groups that have both classes."""
    groups, labels, scores = np.asarray(groups), np.asarray(labels), np.asarray(scores)
    order = np.argsort(groups, kind="stable")
    g, l, s = groups[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    total, weight = 0.0, 0
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(g)]):
        a = auc(l[lo:hi], s[lo:hi])
        if not np.isnan(a):
            total += a * (hi - lo)
            weight += hi - lo
    return total / weight if weight else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def recall_ndcg_at_k(scores: np.ndarray, target_col: np.ndarray, k: int) -> tuple[float, float]:
    """One held-out target per row: Recall@K = hit rate, NDCG@K = 1/log2(rank+2) on a hit.

    Ties are broken at random, in expectation: the target's 0-based rank is uniform over
    [g, g + t], g items scoring higher and t others scoring the same. (Resolving ties in the
    target's favour gave a constant model a recall of 1.0.)

    Args:
        scores: (B, N) with already-excluded columns set to -inf; target_col: (B,) column of the target.
    """
    target_score = scores[np.arange(len(scores)), target_col]
    greater = (scores > target_score[:, None]).sum(1)  # (B,)
    tied = (scores == target_score[:, None]).sum(1) - 1  # (B,) others with the target's score
    hit = np.clip((k - greater) / (tied + 1), 0.0, 1.0)  # P(rank < k)
    # sum of 1/log2(r + 2) over the ranks r in [greater, min(greater + tied, k - 1)], / (tied + 1)
    disc = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2))]  # disc[j] = sum over r < j
    hi = np.minimum(greater + tied + 1, k)
    lo = np.minimum(greater, k)
    ndcg = (disc[hi] - disc[lo]) / (tied + 1)
    return float(hit.mean()), float(ndcg.mean())


@torch.no_grad()
def evaluate_retrieval(model, samples: Samples, catalogue: np.ndarray, ks=(20,), batch_size: int = 512,
                       exclude_seen: bool = True, catalogue_item_feats: np.ndarray | None = None) -> dict[str, float]:
    """Rank the whole catalogue for every sample; the sample's item is the one relevant item.

    The items of the sample's history (`store.history(user, end)`, the whole of it, not only the
    `hist_len` the model reads) are excluded, as serving filters seen items. On ML-100k the
    protocol fixes that history: "standard", the user's train items for a validation target and
    train + validation items for a test target; "strict_time", only those strictly earlier in time.

    Args:
        catalogue_item_feats: (n_item_rows, Fi) dense features each catalogue item is scored with
            (a model with item features: HCN), or None.
    """
    model.eval()
    cat_t = torch.as_tensor(catalogue, dtype=torch.long)
    extra = () if catalogue_item_feats is None else (torch.as_tensor(catalogue_item_feats[catalogue], dtype=torch.float32),)
    col_of = np.full(int(catalogue.max()) + 1, -1, dtype=np.int64)
    col_of[catalogue] = np.arange(len(catalogue))
    sums = {f"{m}_at_{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    n = 0
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(samples)))
        batch = samples.batch(idx)
        # own copy: a model may return a broadcast view (popularity), and exclusions write into it
        # (.numpy(), not np.array(tensor, copy=True): torch's __array__ takes no copy keyword, which numpy 2 warns about)
        scores = model.score_catalogue(batch, cat_t, *extra).float().cpu().detach().numpy().astype(np.float32, copy=True)  # (B, N)
        if exclude_seen:
            for r, k in enumerate(idx):
                seen = col_of[samples.store.history(samples.user[k], samples.end[k])]
                seen = seen[(seen >= 0) & (seen != col_of[samples.item[k]])]
                scores[r, seen] = -np.inf
        target = col_of[samples.item[idx]]
        for k in ks:
            rec, nd = recall_ndcg_at_k(scores, target, k)
            sums[f"recall_at_{k}"] += rec * len(idx)
            sums[f"ndcg_at_{k}"] += nd * len(idx)
        n += len(idx)
    return {key: v / max(n, 1) for key, v in sums.items()}


@torch.no_grad()
def predict_ranking(model, samples: Samples, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    return np.concatenate([model(b)["prob"].float().cpu().numpy() for b in samples.batches(batch_size)])


def evaluate_ranking(model, samples: Samples, batch_size: int = 1024) -> dict[str, float]:
    probs = predict_ranking(model, samples, batch_size)
    return {"auc": auc(samples.label, probs), "gauc": gauc(samples.user, samples.label, probs),
            "logloss": logloss(samples.label, probs)}
