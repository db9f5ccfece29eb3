"""Two-tower retrieval: user tower x item tower, in-batch sampled softmax with logQ correction.

Batch keys: user (B,), hist (B, H) past items as of the target's time (right-aligned, 0 = pad),
item (B,) the target. Scores are cosine similarities / temperature, so serving is an exact
top-K inner product over L2-normalised item vectors (or an ANN index over them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import MLP, HashedEmbedding, ItemEmbeddings, l2_normalize, masked_mean
from models.sampling import StreamingFrequencyEstimator, in_batch_softmax_loss


@dataclass(frozen=True)
class TwoTowerConfig:
    n_users: int  # embedding rows (Vocab.size: padding + known + OOV)
    n_items: int
    n_item_cats: int = 2  # item category rows (0 = none)
    dim: int = 64
    hidden: tuple[int, ...] = (128,)
    hist_len: int = 50  # the user tower pools the last hist_len behaviours
    temperature: float = 0.05  # cosine logits / 0.05: sharp enough for a 1.7k-item softmax
    logq_correction: bool = True
    freq_alpha: float = 0.01  # smoothing of the streaming frequency estimator


class TwoTower(ItemEmbeddings, nn.Module):
    def __init__(self, config: TwoTowerConfig):
        super().__init__()
        c = self.config = config
        self.user_emb = HashedEmbedding(c.n_users, c.dim)
        self._init_item_embeddings(c.n_items, c.n_item_cats, c.dim)
        self.user_mlp = MLP(2 * c.dim, c.hidden, out_dim=c.dim)
        self.item_mlp = MLP(2 * c.dim, c.hidden, out_dim=c.dim)
        self.freq = StreamingFrequencyEstimator(n_buckets=c.n_items, alpha=c.freq_alpha)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = batch["hist"][:, -self.config.hist_len :]  # (B, H)
        pooled = masked_mean(self.item_emb(hist), hist > 0)  # (B, d)
        x = torch.cat([self.user_emb(batch["user"]), pooled], dim=-1)  # (B, 2d)
        return l2_normalize(self.user_mlp(x))  # (B, d)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        x = torch.cat(self.item_parts(items), dim=-1)  # (N, 2d)
        return l2_normalize(self.item_mlp(x))  # (N, d)

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """(B, N) retrieval scores of every user in the batch against `items` (N,)."""
        return self.user_vectors(batch) @ self.item_vectors(items).T / self.config.temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        items = batch["item"]  # (B,)
        if self.training:
            self.freq.update(items)
        u = self.user_vectors(batch)  # (B, d)
        v = self.item_vectors(items)  # (B, d)
        logits = u @ v.T / self.config.temperature  # (B, B)
        log_q = self.freq.log_q(items) if self.config.logq_correction else None  # (B,)
        loss = in_batch_softmax_loss(logits, items, log_q)
        return {"loss": loss, "user_vec": u, "item_vec": v}
