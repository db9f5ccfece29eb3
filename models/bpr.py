"""BPR-MF (Rendle et al., 2009): user and item vectors, a positive scored above sampled negatives.

    score(u, i) = <p_u, q_i>
    loss = -mean log sigmoid(score(u, i+) - score(u, i-)) + reg * mean(|p_u|^2 + |q_i+|^2 + |q_i-|^2)

Negatives are drawn uniformly from the item rows (padding excluded; the few hashed OOV rows are
never positives, so they only make a handful of negatives easy). Trained by the shared loop.
Batch keys: user (B,), item (B,) the positive; hist is not used (a user is its vector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import HashedEmbedding


@dataclass(frozen=True)
class BprConfig:
    n_users: int  # embedding rows (Vocab.size: padding + known + OOV)
    n_items: int
    n_item_cats: int = 0  # unused; every retrieval config takes the same arguments
    dim: int = 64
    reg: float = 1e-4  # L2 on the vectors a batch touches (the classic BPR regulariser)
    n_negatives: int = 1  # negatives per positive

    def __post_init__(self) -> None:
        if self.dim < 1 or self.n_negatives < 1 or self.reg < 0:
            raise ValueError(f"dim ({self.dim}) and n_negatives ({self.n_negatives}) must be >= 1, reg ({self.reg}) >= 0")


class BprMF(nn.Module):
    def __init__(self, config: BprConfig):
        super().__init__()
        c = self.config = config
        self.user_emb = HashedEmbedding(c.n_users, c.dim)
        self.item_emb = HashedEmbedding(c.n_items, c.dim)

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.user_emb(batch["user"]) @ self.item_emb(items).T  # (B, N)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        u = self.user_emb(batch["user"])  # (B, d)
        pos = self.item_emb(batch["item"])  # (B, d)
        neg_items = torch.randint(1, c.n_items, (len(u), c.n_negatives), device=u.device)  # (B, K)
        neg = self.item_emb(neg_items)  # (B, K, d)
        pos_score = (u * pos).sum(-1)  # (B,)
        neg_score = torch.einsum("bd,bkd->bk", u, neg)  # (B, K)
        bpr = -F.logsigmoid(pos_score.unsqueeze(1) - neg_score).mean()
        l2 = (u.pow(2).sum(-1) + pos.pow(2).sum(-1) + neg.pow(2).sum(-1).mean(-1)).mean()
        return {"loss": bpr + c.reg * l2, "score": pos_score}
