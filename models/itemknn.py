"""ItemKNN: item-item cosine similarity over the training interactions, users as their histories.

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink)      U_i: the training users of item i
    score(u, j) = sum of sim(i, j) over the items i in u's history among j's k_neighbours most similar

as RecBole's ItemKNN (top-k neighbours kept per target item, binary interactions). Nothing is
learned by gradient steps, so the training loop is skipped (`closed_form`); `fit_interactions`
builds the (n_items, n_items) matrix, a buffer, so an artefact saves and loads it like weights.
Dense on purpose: exact and simple for catalogues of thousands of items, not for millions.
Batch keys: hist (B, H) right-aligned past items (0 = pad); user and item are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import PAD


@dataclass(frozen=True)
class ItemKnnConfig:
    n_items: int
    n_users: int = 0  # unused: a user is the set of items in its history
    n_item_cats: int = 0  # unused
    k_neighbours: int = 100  # similar items kept per target item (RecBole's `k`)
    shrink: float = 0.0  # added to the cosine's denominator: damps similarities resting on few users
    hist_len: int = 200  # the user profile: the items of the last hist_len behaviours

    def __post_init__(self) -> None:
        if self.k_neighbours < 1 or self.shrink < 0 or self.hist_len < 1:
            raise ValueError(f"k_neighbours ({self.k_neighbours}) and hist_len ({self.hist_len}) must be >= 1, "
                             f"shrink ({self.shrink}) >= 0")


class ItemKNN(nn.Module):
    closed_form = True  # fitted by fit_interactions, not by the training loop

    def __init__(self, config: ItemKnnConfig):
        super().__init__()
        self.config = config
        self.register_buffer("sim", torch.zeros(config.n_items, config.n_items))  # sim[i, j]: i seen -> j scored

    @torch.no_grad()
    def fit_interactions(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """users, items (n,) long rows of the training interactions (a repeated pair counts once)."""
        c = self.config
        x = torch.zeros(int(users.max()) + 1, c.n_items)  # (U, I) binary user-item matrix
        x[users, items] = 1.0
        co = x.T @ x  # (I, I) users in common
        norm = co.diagonal().sqrt()  # (I,) sqrt(|U_i|)
        sim = co / (norm[:, None] * norm[None, :] + c.shrink).clamp_min(1e-12)  # (I, I) cosine
        sim.fill_diagonal_(0.0)  # an item is not its own neighbour
        k = min(c.k_neighbours, c.n_items)
        top = sim.topk(k, dim=0)  # per target item j (column): its k most similar items
        self.sim.zero_().scatter_(0, top.indices, top.values)

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        hist = batch["hist"][:, -self.config.hist_len :]  # (B, H)
        profile = torch.zeros(len(hist), self.config.n_items, device=hist.device).scatter_(1, hist, 1.0)  # (B, I)
        profile[:, PAD] = 0.0  # padding is not an item
        return profile @ self.sim[:, items]  # (B, N)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = self.score_catalogue(batch, batch["item"])  # (B, B)
        return {"score": scores.diagonal()}  # (B,) each sample's own target
