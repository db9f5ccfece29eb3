"""Fine CTR ranker: SDIM long-term interest + DIN short-term attention + DCNv2 crossing, BCE.

    item embedding e(i) = id_emb(i) + cat_emb(cat(i))        (the table the BSE hashes; see item_embedding_table)
    long  = SDIM(e(target), e(hist))                           (or a full target attention / nothing, see long_term)
    short = DIN(e(target), e(hist[-short_len:]))
    x0    = [user, e(target), long, short, e(target)*long, e(target)*short]
    logit = w . [CrossNetV2(x0), MLP(x0)]

The baselines are this same network with only the long-term block swapped, so AUC differences
measure the long-term block alone:
- long_term="sdim": the production model (bucket path at serving, `models/sdim.py`);
- long_term="collision": the attention SDIM approximates, weights (1 - angle/pi)^tau normalised,
  computed exactly over the whole long sequence (`CollisionTargetAttention`, SDIM's tau);
- long_term="attention": softmax target attention (cosine scores with a learned scale and a null
  slot) over the whole long sequence: the usual full attention, not SDIM's;
- long_term="none": DIN on the last `short_len` behaviours only.

Batch keys: user (B,), item (B,), hist (B, L) right-aligned behaviours before the impression
(0 = pad), label (B,) float in {0, 1}. At serving, `long_interest` (B, d) may be passed instead of
being computed from `hist`: the SDIM interest from the BSE's bucket tables
(`models.sdim.sdim_interest_from_tables`), which equals the training path (tested).
With `n_user_feats` / `n_item_feats` > 0 the batch also carries the dense stream features
`user_feats` (B, Fu) and `item_feats` (B, Fi) float32 (`features/vectors.py`: the same vectors at
training and serving); each is projected to d by one linear layer and joins x0:

    x0    = [user, e(target), long, short, e(target)*long, e(target)*short, P_u user_feats, P_i item_feats]

With both at 0 (the default) the network, its parameters and its checkpoints are exactly as before.

Listwise (`listwise=True`, issue 22): the batch carries `cands` (B, C), column 0 the positive and
the rest the candidates the stage above would hand over (pipelines/training/cascade_data.py), and
`label` (B,) the positive's like label (rating >= 4). Two heads share x0 of every candidate:

    order  = w_r . [CrossNetV2(x0), MLP(x0)]    loss_order = CE(softmax_C(order), column 0)
    like   = w   . [CrossNetV2(x0), MLP(x0)]    loss_like  = BCE(like, [label, 0, ..., 0])
    loss   = loss_order + like_weight * loss_like

`order` ranks (the sampled softmax over the candidate set fits Recall@K); `prob` = sigmoid(like)
is the click / like probability /v1/score returns. Without `cands` the pointwise path is unchanged.

Serving scores M candidates of one user with `score_user`, which computes the user side once
(user embedding, history embeddings, user features, SDIM tables from the history) and splits DIN's
first layer (DinAttention.forward_shared_keys); it equals `forward` on the broadcast batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    MLP,
    CollisionTargetAttention,
    CrossNetV2,
    DinAttention,
    DotTargetAttention,
    HashedEmbedding,
    ItemEmbeddings,
    dense_input,
)
from models.sdim import SdimInterest, sdim_interest_sets
from models.sdim_hash import SdimConfig


@dataclass(frozen=True)
class RankerConfig:
    n_users: int
    n_items: int
    n_item_cats: int = 2
    dim: int = 64  # must equal sdim.dim: the hasher projects these embeddings
    long_term: Literal["sdim", "collision", "attention", "none"] = "sdim"
    long_len: int = 1000  # behaviours the long-term block sees
    short_len: int = 50  # DIN sees the last 50 behaviours
    din_hidden: tuple[int, ...] = (64, 32)
    cross_layers: int = 3
    mlp_hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1  # in the MLP tower; id embeddings overfit quickly on small data
    use_user_id: bool = True
    attention_cosine: bool = True  # long_term="attention": cosine scores with a learned scale (see DotTargetAttention)
    sdim: SdimConfig = field(default_factory=SdimConfig)
    n_user_feats: int = 0  # dense user features (features.vectors.USER_VECTOR_NAMES); 0 = none (older artefacts)
    n_item_feats: int = 0  # dense item features (features.vectors.ITEM_VECTOR_NAMES); 0 = none
    listwise: bool = False  # adds the ordering head trained by softmax over `cands`; False = older artefacts
    like_weight: float = 0.5  # weight of the like head's BCE beside the listwise loss

    def __post_init__(self) -> None:
        if self.long_term not in ("sdim", "collision", "attention", "none"):
            raise ValueError(f"long_term ({self.long_term!r}) must be one of sdim, collision, attention, none")
        if self.long_term == "sdim" and self.sdim.dim != self.dim:
            raise ValueError(f"sdim.dim ({self.sdim.dim}) must equal dim ({self.dim})")
        if self.short_len > self.long_len:
            raise ValueError(f"short_len ({self.short_len}) must be <= long_len ({self.long_len})")
        if self.n_user_feats < 0 or self.n_item_feats < 0:
            raise ValueError(f"n_user_feats ({self.n_user_feats}) and n_item_feats ({self.n_item_feats}) must be >= 0")


class CtrRanker(ItemEmbeddings, nn.Module):
    def __init__(self, config: RankerConfig):
        super().__init__()
        c = self.config = config
        self.user_emb = HashedEmbedding(c.n_users, c.dim)
        self._init_item_embeddings(c.n_items, c.n_item_cats, c.dim)
        self.long_block: nn.Module | None = {
            "sdim": lambda: SdimInterest(c.sdim),
            "collision": lambda: CollisionTargetAttention(c.sdim.tau),
            "attention": lambda: DotTargetAttention(c.dim, null_key=True, cosine=c.attention_cosine),
            "none": lambda: None,
        }[c.long_term]()
        self.din = DinAttention(c.dim, c.din_hidden)
        x_dim = (6 + (c.n_user_feats > 0) + (c.n_item_feats > 0)) * c.dim
        self.cross = CrossNetV2(x_dim, c.cross_layers)
        self.mlp = MLP(x_dim, c.mlp_hidden, dropout=c.dropout)
        self.head = nn.Linear(x_dim + self.mlp.out_dim, 1)
        # created last, and only when used: a config without features keeps the old parameters and init
        self.user_feat_proj = nn.Linear(c.n_user_feats, c.dim) if c.n_user_feats else None
        self.item_feat_proj = nn.Linear(c.n_item_feats, c.dim) if c.n_item_feats else None
        self.order_head = nn.Linear(x_dim + self.mlp.out_dim, 1) if c.listwise else None

    def item_embed(self, items: torch.Tensor) -> torch.Tensor:
        item, cat = self.item_parts(items)
        return item + cat  # (..., d)

    @torch.no_grad()
    def item_embedding_table(self) -> np.ndarray:
        """(n_items, d) float32: e(i) for every item row; the BSE hashes and sums these."""
        return self.item_embed(torch.arange(self.config.n_items, device=self.item_cat.device)).float().cpu().numpy()

    def long_interest(self, target: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        if self.long_block is None:
            return torch.zeros_like(target)
        seq = hist[:, -self.config.long_len :]  # (B, L)
        return self.long_block(target, self.item_embed(seq), seq > 0)  # (B, d)

    def dense_parts(self, batch: dict[str, torch.Tensor], n_rows: int, n_user_rows: int | None = None) -> list[torch.Tensor]:
        """Projected dense features, each (n_rows, d); user features may come as one row (broadcast)."""
        c = self.config
        parts = []
        if self.user_feat_proj is not None:
            uf = dense_input(batch, "user_feats", c.n_user_feats, n_user_rows or n_rows)
            parts.append(self.user_feat_proj(uf).expand(n_rows, -1))  # (n_rows, d)
        if self.item_feat_proj is not None:
            parts.append(self.item_feat_proj(dense_input(batch, "item_feats", c.n_item_feats, n_rows)))  # (n_rows, d)
        return parts

    def logit(self, x0: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cross(x0), self.mlp(x0)], dim=-1)).squeeze(-1)  # (B,)

    def heads(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(order logit, like logit), each (B,); the order head is the like head without listwise."""
        h = torch.cat([self.cross(x0), self.mlp(x0)], dim=-1)  # (B, x_dim + mlp_out)
        like = self.head(h).squeeze(-1)  # (B,)
        return (self.order_head(h).squeeze(-1) if self.order_head is not None else like), like

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "cands" in batch:
            return self.forward_listwise(batch)
        c = self.config
        target = self.item_embed(batch["item"])  # (B, d)
        user = self.user_emb(batch["user"]) if c.use_user_id else torch.zeros_like(target)  # (B, d)
        long = batch["long_interest"] if "long_interest" in batch else self.long_interest(target, batch["hist"])  # (B, d)
        short_seq = batch["hist"][:, -c.short_len :]  # (B, 50)
        short = self.din(target, self.item_embed(short_seq), short_seq > 0)  # (B, d)
        dense = self.dense_parts(batch, len(target))  # 0-2 x (B, d)
        x0 = torch.cat([user, target, long, short, target * long, target * short, *dense], dim=-1)  # (B, 6d..8d)
        logit = self.logit(x0)  # (B,)
        out = {"logit": logit, "prob": torch.sigmoid(logit)}
        if "label" in batch:
            out["loss"] = F.binary_cross_entropy_with_logits(logit, batch["label"].float())
        return out

    def forward_listwise(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Candidate sets: every candidate of row b scored with row b's user side (broadcast)."""
        c = self.config
        if self.order_head is None and "label" in batch:  # scoring sets is fine: the like head orders them
            raise ValueError("training on a batch with 'cands' needs a RankerConfig with listwise=True")
        cands = batch["cands"]  # (B, C)
        b, n_c = cands.shape
        hist = batch["hist"]  # (B, L)
        target = self.item_embed(cands)  # (B, C, d)
        user = (self.user_emb(batch["user"]) if c.use_user_id else target.new_zeros(b, c.dim))[:, None].expand(-1, n_c, -1)  # (B, C, d)
        long = self.long_interest_sets(target, hist)  # (B, C, d)
        short_seq = hist[:, -c.short_len :]  # (B, 50)
        short = self.din.forward_sets(target, self.item_embed(short_seq), short_seq > 0)  # (B, C, d)
        flat_feats = {}
        if "user_feats" in batch:
            flat_feats["user_feats"] = batch["user_feats"].repeat_interleave(n_c, dim=0)  # (B*C, Fu)
        if "cand_item_feats" in batch:
            flat_feats["item_feats"] = batch["cand_item_feats"].reshape(b * n_c, -1)  # (B*C, Fi)
        dense = [x.view(b, n_c, -1) for x in self.dense_parts(flat_feats, b * n_c)]  # 0-2 x (B, C, d)
        x0 = torch.cat([user, target, long, short, target * long, target * short, *dense], dim=-1)  # (B, C, 6d..8d)
        x0 = x0.reshape(b * n_c, -1)  # (B*C, 6d..8d)
        order, like = (h.view(b, n_c) for h in self.heads(x0))  # (B, C) each
        out = {"score": order, "logit": like, "prob": torch.sigmoid(like)}
        if "label" in batch:
            target_col = torch.zeros(b, dtype=torch.long, device=order.device)
            # a sampled candidate that is the positive again (random draws) is masked, not pushed down
            dup = (cands == cands[:, :1]) & (torch.arange(n_c, device=cands.device) > 0)  # (B, C)
            loss_order = F.cross_entropy(order.masked_fill(dup, float("-inf")), target_col)
            like_target = torch.zeros_like(like)
            like_target[:, 0] = batch["label"].float()
            loss_like = F.binary_cross_entropy_with_logits(like, like_target)
            out.update(loss=loss_order + c.like_weight * loss_like, order_loss=loss_order, like_loss=loss_like)
        return out

    def score_user(self, user: torch.Tensor, hist: torch.Tensor, items: torch.Tensor,
                   long_interest: torch.Tensor | None = None, user_feats: torch.Tensor | None = None,
                   item_feats: torch.Tensor | None = None,
                   head: Literal["like", "order", "both"] = "like") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Serving: logits of M candidates for ONE user, the user side computed once.

        Equals `forward` on the broadcast batch (user and hist repeated M times) within float
        rounding (tested to 1e-5 in eval mode); call it under torch.inference_mode().

        Args:
            user: (1,) long user row; hist: (1, L) long right-aligned behaviours (0 = pad);
            items: (M,) long candidate rows.
            long_interest: (M, d) SDIM interest from the BSE tables, or None to compute it from hist.
            user_feats: (1, Fu) float32, needed when n_user_feats > 0; item_feats: (M, Fi) likewise.
            head: "like" (the probability's logit, default), "order" (the listwise ordering head) or
                "both" (one forward pass for the two).
        Returns:
            (M,) logits, or (order, like) for "both".
        """
        c = self.config
        m = len(items)
        target = self.item_embed(items)  # (M, d)
        user_vec = (self.user_emb(user) if c.use_user_id else target.new_zeros(1, c.dim)).expand(m, -1)  # (M, d)
        long = long_interest if long_interest is not None else self.long_interest_one_user(target, hist[0])  # (M, d)
        short_seq = hist[0, -c.short_len :]  # (50,)
        short = self.din.forward_shared_keys(target, self.item_embed(short_seq), short_seq > 0)  # (M, d)
        dense = self.dense_parts({"user_feats": user_feats, "item_feats": item_feats}, m, n_user_rows=1)  # 0-2 x (M, d)
        x0 = torch.cat([user_vec, target, long, short, target * long, target * short, *dense], dim=-1)  # (M, 6d..8d)
        order, like = self.heads(x0)  # (M,) each
        return (order, like) if head == "both" else order if head == "order" else like

    def long_interest_sets(self, target: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Long-term interest of C candidates per row (B, C, d) over each row's history (B, L):
        SDIM with tables built once per row; the other blocks on the broadcast batch."""
        if self.long_block is None:
            return torch.zeros_like(target)
        seq = hist[:, -self.config.long_len :]  # (B, L)
        keys, mask = self.item_embed(seq), seq > 0  # (B, L, d), (B, L)
        if isinstance(self.long_block, SdimInterest):
            return sdim_interest_sets(self.long_block.hasher, target, keys, mask)  # (B, C, d)
        b, n_c, d = target.shape
        flat = self.long_block(target.reshape(b * n_c, d), keys.repeat_interleave(n_c, 0), mask.repeat_interleave(n_c, 0))
        return flat.view(b, n_c, d)  # (B, C, d)

    def long_interest_one_user(self, target: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Long-term interest of M candidates (M, d) over one history (L,): SDIM through bucket tables
        built once from the history (O(S*d) per candidate), attention with the keys shared."""
        if self.long_block is None:
            return torch.zeros_like(target)
        seq = hist[-self.config.long_len :]  # (L,)
        keys, mask = self.item_embed(seq), seq > 0  # (L, d), (L,)
        if isinstance(self.long_block, SdimInterest):
            return self.long_block.forward_shared(target, keys, mask)  # (M, d)
        m = len(target)
        return self.long_block(target, keys.expand(m, -1, -1), mask.expand(m, -1))  # (M, d)
