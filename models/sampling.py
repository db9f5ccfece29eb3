"""In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

With in-batch negatives an item is sampled as a negative in proportion to its frequency, so the
plain in-batch softmax over-penalises popular items. The correction subtracts log p_j from the
logit of every column item j; p_j comes from a streaming frequency estimator (the paper's hash
arrays A = last step seen, B = smoothed gap between sightings, p = 1/B), updated batch by batch as
the training stream goes by, so no global count pass is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StreamingFrequencyEstimator(nn.Module):
    """Estimates each item's per-step sampling probability from the stream of training batches.

    Args:
        n_buckets: hash array size; >= the vocabulary size gives one slot per item.
        alpha: smoothing of the gap estimate (the paper's learning rate).
    """

    def __init__(self, n_buckets: int, alpha: float = 0.01):
        super().__init__()
        self.n_buckets = n_buckets
        self.alpha = alpha
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_step", torch.zeros(n_buckets, dtype=torch.float64))  # A
        self.register_buffer("gap", torch.ones(n_buckets, dtype=torch.float64))  # B; 1 = "every step" until seen

    def _slot(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.long() % self.n_buckets

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """One training step that saw `ids` (duplicates count once per step, as in the paper)."""
        self.step += 1
        slots = torch.unique(self._slot(ids.reshape(-1)))
        t = self.step.to(torch.float64)
        seen_before = self.last_step[slots] > 0
        observed_gap = torch.where(seen_before, t - self.last_step[slots], t)
        self.gap[slots] = (1 - self.alpha) * self.gap[slots] + self.alpha * observed_gap
        self.last_step[slots] = t

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """p_j: estimated probability that item j appears in a step (1 / expected gap)."""
        return (1.0 / self.gap[self._slot(ids)].clamp_min(1.0)).to(torch.float32)

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.log(self.probability(ids).clamp_min(1e-12))


def in_batch_softmax_loss(
    logits: torch.Tensor,
    item_ids: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax where row i's positive is column i and the other columns are negatives.

    Args:
        logits: (B, B) similarity of user i and item j (already divided by the temperature).
        item_ids: (B,) item id of each column; a column holding row i's own item elsewhere in the
            batch is an accidental hit and is masked out rather than pushed down.
        log_q: (B,) log sampling probability of each column item; None disables the correction.
    Returns:
        scalar mean cross-entropy.
    """
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)  # (B, B): s(x, y_j) - log p_j
    same_item = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)  # (B, B)
    eye = torch.eye(len(item_ids), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same_item & ~eye, float("-inf"))
    target = torch.arange(len(item_ids), device=logits.device)
    return F.cross_entropy(logits, target)
