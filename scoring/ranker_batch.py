"""The fine ranker's serving forward pass: the candidates of R requests in one pass, with the
item-side terms computed once per item row at load.

`CtrRanker.score_user` scores M candidates of ONE user. Here the candidates of R requests are
concatenated (N = sum of the M_r) and each request's user-side rows are gathered per candidate
by its request index `seg` (N,), so the crossing network, the MLP and both heads run as one
matrix product over all N rows. Each request gets what `score_user` gives it alone (tested to
1e-5; only the summation order of some products differs).

What is computed when:

    at load, per item row (V+ rows: padding, known, OOV)   e(i) = id_emb(i) + cat_emb(cat(i))
                                                           DIN's key part B e(i) + b (behaviours are items)
                                                           (SDIM signatures: scoring/servables.py)
    per request                                            user row, the real behaviours' e and key part (gathers),
                                                           DIN's folded pair matrix P (D, L, H),
                                                           SDIM's normalised tables, P_u user_feats
    per candidate                                          the pair product q . P (M, L, H), crossing, MLP

DIN's query part A q is not gathered from a table: it rides in the pair product for free
(DinAttention.forward_folded says why). The pair product stays one matrix product per request,
not one over the batch: the keys differ per user, and a gathered (N, L, D) copy of them made the
batched product 2-4x slower than the per-request loop on CPU (measured at 8 x 200 candidates, L = 50).

Memory: (d + H) floats per item row, 128 at the production shapes: 51 MB for 100,000 items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.layers import dense_input
from models.ranker import CtrRanker
from models.sdim import normalize_tables


@dataclass
class RankerBatch:
    """Model rows of R requests' candidates, on the model's device.

    Args:
        users: (R,) long user rows.
        short_hist: (R, short_len) long right-aligned behaviours (0 = pad), DIN's window.
        items: (N,) long candidate rows, request after request.
        counts: (R,) candidates per request, summing to N (a request may have none).
        tables: (R, S, B, d) float32 SDIM bucket sums per request (zeros where a request has none:
            its long-term block is empty, as in score_user with a zero long_interest), or None
            when the model has no SDIM block.
        long_hist: (R, long_len) long behaviours for the collision / attention baselines, else None.
        user_feats: (R, Fu) float32 when the model uses user features, else None.
        item_feats: (N, Fi) float32 when the model uses item features, else None.
    """

    users: torch.Tensor
    short_hist: torch.Tensor
    items: torch.Tensor
    counts: list[int]
    tables: torch.Tensor | None = None
    long_hist: torch.Tensor | None = None
    user_feats: torch.Tensor | None = None
    item_feats: torch.Tensor | None = None


class BatchedRanker:
    """A CtrRanker's serving pass over a RankerBatch; build once per loaded model version.

    Args:
        model: the ranker, in eval mode, on the device the batches come on.
        item_sigs: (V+, S) long SDIM signatures of every item row (SDIM models only), else None.
    """

    def __init__(self, model: CtrRanker, item_sigs: torch.Tensor | None = None):
        self.model = model
        c = model.config
        self.item_sigs = item_sigs
        with torch.inference_mode():
            rows = torch.arange(c.n_items, device=model.item_cat.device)
            self.item_emb = model.item_embed(rows)  # (V+, d)
            self.item_key_part = model.din.key_part(self.item_emb)  # (V+, H)

    def _long(self, b: RankerBatch, target: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """(N, d) long-term interest of every candidate."""
        c, n_req = self.model.config, len(b.counts)
        if c.long_term == "none":
            return torch.zeros_like(target)
        if c.long_term == "sdim":
            # every request's tables in one (R*S*B, d) matrix; a candidate picks its S rows in its request's block
            n_sig, n_buckets = b.tables.shape[1:3]
            normed = normalize_tables(b.tables).reshape(-1, c.dim)  # (R*S*B, d)
            sigs = self.item_sigs[b.items]  # (N, S)
            rows = (seg[:, None] * n_sig + torch.arange(n_sig, device=seg.device)) * n_buckets + sigs  # (N, S)
            return normed[rows].mean(1)  # (N, d)
        # the collision / attention baselines read each user's long sequence: one request at a time
        parts = target.split(b.counts)
        return torch.cat([self.model.long_interest_one_user(parts[r], b.long_hist[r]) for r in range(n_req)])  # (N, d)

    def _short(self, b: RankerBatch, target: torch.Tensor) -> torch.Tensor:
        """(N, d) DIN interest: one folded first-layer product per request over its real behaviours only
        (padding weighs exactly 0 after the mask, so a user with 5 behaviours costs 5 columns, not 50)."""
        parts, out = target.split(b.counts), []
        for r, rows in enumerate(b.short_hist):
            rows = rows[rows > 0]  # (n_r,) the real behaviours; none -> DIN's interest is 0, as with the mask
            keep = torch.ones_like(rows, dtype=torch.bool)
            out.append(self.model.din.forward_folded(parts[r], self.item_emb[rows], self.item_key_part[rows], keep))
        return torch.cat(out)  # (N, d)

    def _dense(self, b: RankerBatch, seg: torch.Tensor) -> list[torch.Tensor]:
        """0-2 x (N, d): projected user features (one row per request, gathered) and item features."""
        m, c, n = self.model, self.model.config, len(b.items)
        parts = []
        if m.user_feat_proj is not None:
            parts.append(m.user_feat_proj(dense_input({"user_feats": b.user_feats}, "user_feats", c.n_user_feats,
                                                      len(b.counts)))[seg])  # (N, d)
        if m.item_feat_proj is not None:
            parts.append(m.item_feat_proj(dense_input({"item_feats": b.item_feats}, "item_feats", c.n_item_feats, n)))
        return parts

    def __call__(self, b: RankerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(order logits (N,), like logits (N,)), as score_user(..., head="both") per request.
        Call under torch.inference_mode()."""
        m, c = self.model, self.model.config
        seg = torch.repeat_interleave(torch.arange(len(b.counts), device=b.items.device),
                                      torch.as_tensor(b.counts, device=b.items.device))  # (N,) request of each candidate
        target = self.item_emb[b.items]  # (N, d)
        user = m.user_emb(b.users)[seg] if c.use_user_id else torch.zeros_like(target)  # (N, d)
        long, short = self._long(b, target, seg), self._short(b, target)  # (N, d) each
        x0 = torch.cat([user, target, long, short, target * long, target * short, *self._dense(b, seg)], dim=-1)  # (N, 6d..8d)
        return m.heads(x0)  # (N,) each
