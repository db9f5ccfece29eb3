"""Count popularity: every user gets the catalogue ranked by how often each item occurs in training.

The "most popular" baseline readers expect on ML-100k (RecBole's Pop), unlike `popularity.py`,
whose logits are then refined by a softmax. Nothing is learned by gradient steps, so the training
loop is skipped (`closed_form`): `fit_interactions` counts, and the counts are a buffer, so an
artefact saves and loads them like any weights.
Batch keys: item (B,) (only the batch size is used: every user gets the same scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PopCountConfig:
    n_items: int
    n_users: int = 0  # unused; every retrieval config takes the same arguments
    n_item_cats: int = 0  # unused


class PopCount(nn.Module):
    closed_form = True  # fitted by fit_interactions, not by the training loop

    def __init__(self, config: PopCountConfig):
        super().__init__()
        self.config = config
        self.register_buffer("counts", torch.zeros(config.n_items))

    @torch.no_grad()
    def fit_interactions(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """users, items (n,) long rows of the training interactions."""
        self.counts.copy_(torch.bincount(items, minlength=self.config.n_items)[: self.config.n_items].float())

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.counts[items].unsqueeze(0).expand(len(batch["item"]), -1)  # (B, N)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"score": self.counts[batch["item"]]}  # (B,) the target's training count
