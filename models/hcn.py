"""HCN coarse ranker: hierarchical multi-interest extraction + co-interest network, cheap scoring.

Built from the abstract of "Hierarchical Multi-Interest Co-Network For Coarse-Grained Ranking"
(arXiv 2210.10547). The abstract fixes the ideas (interest centres updated iteratively, long- and
short-term interests extracted separately and fused by a co-interest network); the equations
below are our design (papers/HCN.md, "inferred"), not the paper's:

- level l: soft assignment A = softmax_k(C H^T / sqrt(d)), centres C <- LayerNorm(C + A_hat H)
  with A_hat normalised over the sequence, R iterations; the next level starts from each parent
  centre repeated plus a learned offset (coarse -> fine: 2 -> 4 interests by default);
- co-interest: cross attention long<->short with residual + FFN, then a per-user gate g scales
  the long (g) and short (1-g) interests;
- score(u, v) = sum_k softmax_k(p s_k) s_k with s_k = <u_k, v> / T: K dot products per candidate,
  no per-candidate attention over the sequence, so U is computed once per request (cacheable).
Training: in-batch sampled softmax with logQ correction + lambda * ||C C^T - I||_F^2 / K^2.
With `cands` (B, C) in the batch (issue 22: column 0 the positive, the rest the two-tower's
candidates for that position, mined out of fold by pipelines/training/cascade_data.py), the
softmax over each row's own candidate set is added with weight `cand_weight`, so HCN learns to
order what the retrieval stage hands it, not only the whole catalogue. With `cand_teacher` (B, C)
too (the ranker's order logits of the same sets), KL(softmax(teacher) || softmax(HCN)) over the
set is added with weight `distill_weight`: HCN distilled from the ranker's order, so that its top
M keeps what the ranker would put on top.

Batch keys: user (B,), hist (B, H) right-aligned past items (0 = pad), item (B,). With
`n_user_feats` / `n_item_feats` > 0 also `user_feats` (B, Fu) and `item_feats` (B, Fi) float32, the
stream's dense features (`features/vectors.py`):
- item features join the item tower's input, v = normalise(MLP([id emb, category emb, item_feats])),
  so item vectors stay one per item and scoring stays K dot products per candidate;
- user features join the co-interest gate's profile, p = user emb + P_u user_feats: they decide how
  much the long- vs short-term interests weigh (an active user this hour leans on the short term),
  not the interests themselves, which stay a function of the sequence (cacheable per request).
With both at 0 (the default) the parameters, and saved checkpoints, are exactly as before.
Serving: `interests(batch)` once per request (batch of one user), `item_vectors(items, item_feats)`
for the candidates, `score(u, v)`; equal to what training computes (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import MLP, HashedEmbedding, ItemEmbeddings, dense_input, l2_normalize
from models.sampling import StreamingFrequencyEstimator, in_batch_softmax_loss


@dataclass(frozen=True)
class HcnConfig:
    n_users: int
    n_items: int
    n_item_cats: int = 2
    dim: int = 64
    long_len: int = 200  # long-term sequence: the last 200 behaviours
    short_len: int = 20  # short-term sequence: the last 20 of them
    long_levels: tuple[int, ...] = (2, 4)  # interests per level, coarse -> fine; each divides the next
    short_levels: tuple[int, ...] = (2,)
    n_iters: int = 3  # centre refinements per level
    n_heads: int = 2
    score_power: float = 1.0  # p in softmax_k(p s_k); large p -> max_k s_k
    temperature: float = 0.05
    div_weight: float = 1e-2  # weight of the anti-redundancy regulariser
    logq_correction: bool = True
    freq_alpha: float = 0.01
    n_user_feats: int = 0  # dense user features into the gate's profile; 0 = none (older artefacts)
    n_item_feats: int = 0  # dense item features into the item tower; 0 = none
    cand_weight: float = 1.0  # weight of the candidate-set softmax (only for batches that carry `cands`)
    # weight of KL(teacher || HCN) over each row's candidate set, for batches that carry
    # `cand_teacher` (B, C): the ranker's order logits (distillation, issue 22); else unused
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.n_user_feats < 0 or self.n_item_feats < 0:
            raise ValueError(f"n_user_feats ({self.n_user_feats}) and n_item_feats ({self.n_item_feats}) must be >= 0")
        for name, levels in (("long_levels", self.long_levels), ("short_levels", self.short_levels)):
            if not levels or any(b % a for a, b in zip(levels, levels[1:])):
                raise ValueError(f"{name} ({levels}) must be non-empty and each level must divide the next")
        if self.short_len > self.long_len:
            raise ValueError(f"short_len ({self.short_len}) must be <= long_len ({self.long_len})")


class HierarchicalInterestExtractor(nn.Module):
    """Interest centres refined iteratively, level by level (coarse -> fine)."""

    def __init__(self, dim: int, levels: tuple[int, ...], n_iters: int):
        super().__init__()
        self.levels, self.n_iters = levels, n_iters
        self.proj = nn.Linear(dim, dim)  # H = X W_h
        self.init_centres = nn.Parameter(torch.randn(levels[0], dim) * 0.5)
        self.offsets = nn.ParameterList(nn.Parameter(torch.randn(k, dim) * 0.1) for k in levels[1:])
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in levels)

    @staticmethod
    def refine(centres, h, mask, n_iters: int, norm: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """R soft k-means steps. centres (B, K, d), h (B, N, d), mask (B, N) -> centres, per-step shift."""
        shifts = []
        scale = 1.0 / math.sqrt(h.shape[-1])
        m = mask.unsqueeze(1).to(h.dtype)  # (B, 1, N)
        h_t = h.transpose(1, 2)  # (B, d, N)
        # (B, K, N) layout, softmax over K on axis 1: the same numbers as (B, N, K); with score's layout
        # change it halved an ML-100k training step on one thread (0.23 -> 0.11 s per batch of 512)
        for _ in range(n_iters):
            assign = torch.softmax(torch.matmul(centres, h_t) * scale, dim=1) * m  # (B, K, N)
            assign = assign / assign.sum(2, keepdim=True).clamp_min(1e-9)  # each centre's weights sum to 1 over N
            new = norm(centres + torch.matmul(assign, h))  # (B, K, d)
            shifts.append((new - centres).norm(dim=-1).mean())
            centres = new
        return centres, shifts

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, N, d), mask (B, N)
        h = self.proj(x)  # (B, N, d)
        centres = self.init_centres.expand(x.shape[0], -1, -1)  # (B, K_1, d)
        for level, k in enumerate(self.levels):
            if level > 0:
                centres = centres.repeat_interleave(k // centres.shape[1], dim=1) + self.offsets[level - 1]  # (B, K_l, d)
            centres, _ = self.refine(centres, h, mask, self.n_iters, self.norms[level])
        return centres  # (B, K_last, d)


def diversity_loss(centres: torch.Tensor) -> torch.Tensor:
    """||C_hat C_hat^T - I||_F^2 / K^2 averaged over the batch; 0 when interests are orthogonal."""
    c = l2_normalize(centres)  # (B, K, d)
    gram = c @ c.transpose(1, 2)  # (B, K, K)
    eye = torch.eye(c.shape[1], device=c.device)
    return ((gram - eye) ** 2).sum((1, 2)).mean() / c.shape[1] ** 2


class CoInterestNetwork(nn.Module):
    """Long <-> short cross attention with residuals, then a per-user gate between the two sets."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.long_from_short = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.short_from_long = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.ffn_long, self.ffn_short = MLP(dim, (2 * dim,), out_dim=dim), MLP(dim, (2 * dim,), out_dim=dim)
        self.ln_long, self.ln_short = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.gate = MLP(3 * dim, (dim,), out_dim=1)

    def forward(self, c_long: torch.Tensor, c_short: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        # c_long (B, KL, d), c_short (B, KS, d), profile (B, d)
        cl = c_long + self.long_from_short(c_long, c_short, c_short, need_weights=False)[0]  # (B, KL, d)
        cs = c_short + self.short_from_long(c_short, c_long, c_long, need_weights=False)[0]  # (B, KS, d)
        cl, cs = self.ln_long(cl + self.ffn_long(cl)), self.ln_short(cs + self.ffn_short(cs))
        g = torch.sigmoid(self.gate(torch.cat([cl.mean(1), cs.mean(1), profile], dim=-1)))  # (B, 1)
        return torch.cat([g.unsqueeze(-1) * l2_normalize(cl), (1 - g).unsqueeze(-1) * l2_normalize(cs)], dim=1)  # (B, K, d)


class HCN(ItemEmbeddings, nn.Module):
    def __init__(self, config: HcnConfig):
        super().__init__()
        c = self.config = config
        self.user_emb = HashedEmbedding(c.n_users, c.dim)
        self._init_item_embeddings(c.n_items, c.n_item_cats, c.dim)
        self.extract_long = HierarchicalInterestExtractor(c.dim, c.long_levels, c.n_iters)
        self.extract_short = HierarchicalInterestExtractor(c.dim, c.short_levels, c.n_iters)
        self.co_interest = CoInterestNetwork(c.dim, c.n_heads)
        self.item_mlp = MLP(2 * c.dim + c.n_item_feats, (2 * c.dim,), out_dim=c.dim)
        self.freq = StreamingFrequencyEstimator(n_buckets=c.n_items, alpha=c.freq_alpha)
        self.user_feat_proj = nn.Linear(c.n_user_feats, c.dim) if c.n_user_feats else None  # last: old init order kept

    def interests(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """User tower: (U (B, K, d) fused interests, diversity loss). U is cacheable per request."""
        c = self.config
        long_seq = batch["hist"][:, -c.long_len :]  # (B, NL)
        short_seq = long_seq[:, -c.short_len :]  # (B, NS)
        c_long = self.extract_long(self.item_emb(long_seq), long_seq > 0)  # (B, KL, d)
        c_short = self.extract_short(self.item_emb(short_seq), short_seq > 0)  # (B, KS, d)
        profile = self.user_emb(batch["user"])  # (B, d)
        if self.user_feat_proj is not None:
            profile = profile + self.user_feat_proj(dense_input(batch, "user_feats", c.n_user_feats, len(profile)))  # (B, d)
        u = self.co_interest(c_long, c_short, profile)  # (B, K, d)
        return u, diversity_loss(c_long) + diversity_loss(c_short)

    def item_vectors(self, items: torch.Tensor, item_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Item tower: items (N,) [+ item_feats (N, Fi) when configured] -> (N, d) unit vectors."""
        parts = list(self.item_parts(items))  # 2 x (N, d)
        if self.config.n_item_feats:
            parts.append(dense_input({"item_feats": item_feats}, "item_feats", self.config.n_item_feats, len(items)))
        return l2_normalize(self.item_mlp(torch.cat(parts, dim=-1)))  # (N, d)

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Cheap scoring: u (B, K, d) x v (N, d) -> (B, N); K dot products per candidate."""
        # K on axis 1, not last: on CPU a softmax over a short last axis (K = 6) and its backward cost
        # about 2.5x more, and in training this (B, K, B) tensor is the largest one
        s = torch.matmul(u, v.T) / self.config.temperature  # (B, K, N)
        return (torch.softmax(self.config.score_power * s, dim=1) * s).sum(1)  # (B, N)

    def score_catalogue(self, batch: dict[str, torch.Tensor], items: torch.Tensor,
                        item_feats: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) scores of every user in the batch against `items` (N,) [with their item_feats (N, Fi)]."""
        return self.score(self.interests(batch)[0], self.item_vectors(items, item_feats))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        items = batch["item"]  # (B,)
        if self.training:
            self.freq.update(items)
        u, div = self.interests(batch)  # (B, K, d), ()
        logits = self.score(u, self.item_vectors(items, batch.get("item_feats")))  # (B, B): user i vs in-batch item j
        log_q = self.freq.log_q(items) if self.config.logq_correction else None
        main = in_batch_softmax_loss(logits, items, log_q)
        out = {"loss": main + self.config.div_weight * div, "main_loss": main, "div_loss": div, "interests": u}
        if "cands" in batch:
            cand = self.score_sets(u, batch["cands"])  # (B, C)
            dup = (batch["cands"] == items[:, None]) & (torch.arange(cand.shape[1], device=cand.device) > 0)  # (B, C)
            cand_loss = F.cross_entropy(cand.masked_fill(dup, float("-inf")), torch.zeros_like(items))
            out.update(loss=out["loss"] + self.config.cand_weight * cand_loss, cand_loss=cand_loss)
            if "cand_teacher" in batch:
                # keep what the ranker would put on top: HCN's softmax over the set matches the ranker's
                teacher = F.softmax(batch["cand_teacher"].masked_fill(dup, float("-inf")), dim=1)  # (B, C)
                log_student = F.log_softmax(cand.masked_fill(dup, float("-inf")), dim=1)  # (B, C)
                kl = (teacher * (torch.log(teacher.clamp_min(1e-12)) - log_student.clamp_min(-1e4))).sum(1).mean()
                out.update(loss=out["loss"] + self.config.distill_weight * kl, distill_loss=kl)
        return out

    def score_sets(self, u: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """Each row's own candidates: u (B, K, d) x cands (B, C) -> (B, C), the same score as `score`."""
        b, n_c = cands.shape
        uniq, inv = torch.unique(cands, return_inverse=True)  # (U,), (B, C): each item's tower once (U <= catalogue)
        v = self.item_vectors(uniq)[inv]  # (B, C, d); no item features on this path
        s = torch.matmul(u, v.transpose(1, 2)) / self.config.temperature  # (B, K, C)
        return (torch.softmax(self.config.score_power * s, dim=1) * s).sum(1)  # (B, C)
