"""Popularity baseline: one logit per item, the same for every user.

Trained with a full softmax over the catalogue, whose optimum is log(item frequency), so it is
the classic "most popular" ranking; `from_counts` sets that optimum directly without training.
Batch keys: item (B,) targets; user/hist are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PopularityConfig:
    n_items: int
    n_users: int = 0  # unused; kept so every retrieval config takes the same arguments
    n_item_cats: int = 0  # unused


class Popularity(nn.Module):
    def __init__(self, config: PopularityConfig):
        super().__init__()
        self.config = config
        self.logit = nn.Parameter(torch.zeros(config.n_items))

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> "Popularity":
        """counts (n_items,) interactions per item row; log(count + 1) as the logit."""
        model = cls(PopularityConfig(n_items=len(counts)))
        model.start_from_counts(counts)
        return model

    def start_from_counts(self, counts: np.ndarray) -> None:
        """Start at the count optimum, log(count + 1) per item row (training only refines it)."""
        with torch.no_grad():
            self.logit.copy_(torch.log1p(torch.as_tensor(counts, dtype=torch.float32)))

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.logit[items].unsqueeze(0).expand(len(batch["item"]), -1)  # (B, N)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logit.unsqueeze(0).expand(len(batch["item"]), -1)  # (B, n_items)
        return {"loss": F.cross_entropy(logits, batch["item"])}
