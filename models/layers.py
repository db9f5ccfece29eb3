"""Shared layers: vocabularies with hashed OOV buckets, embeddings, MLP, target attention (softmax,
collision-probability, DIN), crossing.

Every model in `models/` composes these; none re-implements them. Index 0 is padding everywhere,
known ids are 1..V, unknown ids map to V+1..V+n_oov by a stable hash (serving never fails on a
new id, and two unknown ids only share a row when their hashes collide).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = 0


def stable_hash(token: str) -> int:
    """Process-independent hash (Python's `hash` is salted per process)."""
    return zlib.crc32(token.encode("utf-8"))


@dataclass
class Vocab:
    """Maps raw string ids to embedding rows: 0 = padding, 1..V known, V+1..V+n_oov hashed unknowns.

    Args:
        name: what the ids are ("user", "item", ...), kept in the artefact.
        tokens: known ids in row order (row i+1).
        n_oov_buckets: rows reserved for ids unseen at training time (>= 1).
    """

    name: str
    tokens: list[str]
    n_oov_buckets: int = 16
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_oov_buckets < 1:
            raise ValueError(f"vocab {self.name!r}: n_oov_buckets ({self.n_oov_buckets}) must be >= 1")
        self._index = {t: i + 1 for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError(f"vocab {self.name!r}: duplicate tokens")

    @classmethod
    def build(cls, name: str, tokens: Iterable[str], n_oov_buckets: int = 16) -> "Vocab":
        """Known ids sorted by first appearance order of `tokens` (deduplicated)."""
        return cls(name, list(dict.fromkeys(str(t) for t in tokens)), n_oov_buckets)

    @property
    def size(self) -> int:
        """Embedding rows needed: padding + known + OOV buckets."""
        return 1 + len(self.tokens) + self.n_oov_buckets

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self, token: str) -> int:
        i = self._index.get(token)
        if i is not None:
            return i
        return 1 + len(self.tokens) + stable_hash(token) % self.n_oov_buckets

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        # serving encodes ~1,500 ids per request: a C-level map over the dict, the Python path only
        # for ids it did not find (unknown ids, and non-str ids, which index() looks up as str)
        tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
        rows = list(map(self._index.get, tokens))
        if None in rows:
            rows = [self.index(str(t)) if r is None else r for r, t in zip(rows, tokens)]
        return np.array(rows, dtype=np.int64).reshape(len(rows))

    def is_known(self, token: str) -> bool:
        return token in self._index

    def to_dict(self) -> dict:
        return {"name": self.name, "tokens": self.tokens, "n_oov_buckets": self.n_oov_buckets}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(d["name"], list(d["tokens"]), int(d["n_oov_buckets"]))


class HashedEmbedding(nn.Embedding):
    """nn.Embedding sized by a Vocab (padding row 0 stays zero)."""

    def __init__(self, n_rows: int, dim: int, init_std: float = 0.05):
        super().__init__(n_rows, dim, padding_idx=PAD)
        nn.init.normal_(self.weight, std=init_std)
        with torch.no_grad():
            self.weight[PAD].zero_()


class ItemEmbeddings:
    """Mixin for models that embed an item as its id plus its category: `item_emb`, `cat_emb` and
    the `item_cat` buffer (item row -> category row, set from the dataset). A mixin rather than a
    sub-module so that the parameter names, and with them saved checkpoints, stay `item_emb.*`."""

    def _init_item_embeddings(self, n_items: int, n_item_cats: int, dim: int) -> None:
        self.item_emb = HashedEmbedding(n_items, dim)
        self.cat_emb = HashedEmbedding(n_item_cats, dim)
        self.register_buffer("item_cat", torch.zeros(n_items, dtype=torch.long))

    def set_item_categories(self, item_cat) -> None:
        self.item_cat.copy_(torch.as_tensor(item_cat, dtype=torch.long))

    def item_parts(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(id embedding, category embedding) of `items`, each (..., d)."""
        return self.item_emb(items), self.cat_emb(self.item_cat[items])


def dense_input(batch: dict[str, torch.Tensor], key: str, n_feats: int, n_rows: int) -> torch.Tensor:
    """batch[key] checked to be (n_rows, n_feats): a model configured with dense features needs them
    (serving passes features.vectors.default_*_features when a store has none)."""
    if key not in batch or batch[key] is None:
        raise KeyError(f"model configured with {n_feats} {key} needs batch[{key!r}] of shape ({n_rows}, {n_feats}); "
                       f"pass features.vectors.default_{key.split('_')[0]}_features(n) when there are none")
    x = batch[key]
    if tuple(x.shape) != (n_rows, n_feats):
        raise ValueError(f"batch[{key!r}] has shape {tuple(x.shape)}, expected ({n_rows}, {n_feats})")
    return x.float()


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) blocks; `out_dim` adds a final linear layer without activation."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0):
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.out_dim = d


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x (B, L, D) where mask (B, L) is true; all-masked rows give zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)


class DotTargetAttention(nn.Module):
    """Scaled dot-product target attention: softmax(s * q.k) over the sequence, masked.

    The usual full target attention (the "softmax attention" baseline). It is not what SDIM
    approximates: that is CollisionTargetAttention below. The scale s starts at 1/sqrt(d) and is
    learned (one scalar), so the attention can sharpen as much as the data asks.

    With `null_key`, one learned logit joins the softmax as an "attend to nothing" slot, so the
    output's magnitude can say "no behaviour matches" (plain softmax always returns a full-weight
    average, even of unrelated behaviours). Same O(L * D) cost.

    With `cosine`, scores are cos(q, k) times a learned scale starting at sqrt(d): scale-invariant
    like SDIM's SimHash (which estimates angles), and sharp from the first step; with small initial
    embeddings a plain dot product starts as mean pooling and takes many steps to sharpen.
    """

    def __init__(self, dim: int, null_key: bool = True, cosine: bool = False):
        super().__init__()
        self.cosine = cosine
        self.log_scale = nn.Parameter(torch.tensor((0.5 if cosine else -0.5) * math.log(dim)))
        self.null_logit = nn.Parameter(torch.zeros(())) if null_key else None

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # query (B, D), keys (B, L, D), mask (B, L)
        q, k = (l2_normalize(query), l2_normalize(keys)) if self.cosine else (query, keys)
        scores = torch.einsum("bd,bld->bl", q, k) * self.log_scale.exp()  # (B, L)
        scores = scores.masked_fill(~mask, float("-inf"))
        if self.null_logit is not None:
            scores = torch.cat([scores, self.null_logit.expand(len(scores), 1)], dim=1)  # (B, L+1)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)[:, : keys.shape[1]]  # (B, L); all-masked -> 0
        return torch.einsum("bl,bld->bd", weights, keys)  # (B, D)


class CollisionTargetAttention(nn.Module):
    """The target attention SDIM approximates: behaviour k weighs w_k = (1 - theta_k / pi)^tau,
    theta_k the angle between query and key, i.e. the probability that a tau-bit SimHash
    signature of the key equals the query's. Each SDIM signature's bucket sum is an unbiased
    estimate of sum_k w_k key_k, which SDIM then L2-normalises; here the weights are normalised to
    sum to one over the real behaviours and the result is L2-normalised the same way (the first
    step only fixes the scale, which the second removes; it keeps the sum well conditioned).
    SDIM's output differs by its sampling noise and by averaging the S normalised estimates
    instead of normalising their mean. No parameters: tau is SDIM's, so only the hashing differs.
    """

    def __init__(self, tau: int):
        super().__init__()
        self.tau = tau

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # query (B, D), keys (B, L, D), mask (B, L)
        cos = torch.einsum("bd,bld->bl", l2_normalize(query), l2_normalize(keys))  # (B, L)
        # acos has an infinite slope at +-1 (a behaviour equal to the query): keep the gradient finite
        theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6))  # (B, L) in (0, pi)
        w = (1.0 - theta / math.pi).pow(self.tau) * mask.to(cos.dtype)  # (B, L) collision probabilities
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)  # (B, L); all-masked rows stay 0
        return l2_normalize(torch.einsum("bl,bld->bd", w, keys))  # (B, D)


class DinAttention(nn.Module):
    """DIN's local activation unit: an MLP on [q, k, q-k, q*k] gives one unnormalised weight per behaviour."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 32)):
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, out_dim=1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # query (B, D), keys (B, L, D), mask (B, L)
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        w = self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # (B, L)
        w = w * mask.to(w.dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(w.dtype)  # length-normalised
        return torch.einsum("bl,bld->bd", w, keys)  # (B, D)

    def forward_shared_keys(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same result as forward for M queries against ONE sequence (serving: M candidates of one user).

        The first layer is linear in [q, k, q-k, q*k], so W [q; k; q-k; q*k] = A q + B k + C (q*k)
        with A = W_q + W_(q-k), B = W_k - W_(q-k), C = W_(q*k): the q part once per candidate, the
        k part once per behaviour, only the q*k part per pair, and no (M, L, 4D) concatenation.
        """
        # query (M, D), keys (L, D), mask (L,)
        first = self.mlp[0]
        w_q, w_k, w_diff, w_prod = first.weight.split(query.shape[-1], dim=1)  # each (H, D)
        per_q = query @ (w_q + w_diff).T + first.bias  # (M, H)
        per_k = keys @ (w_k - w_diff).T  # (L, H)
        per_pair = (query.unsqueeze(1) * keys.unsqueeze(0)) @ w_prod.T  # (M, L, H)
        h = per_pair + per_q.unsqueeze(1) + per_k.unsqueeze(0)  # (M, L, H): the first layer's output
        for layer in list(self.mlp)[1:]:  # the rest of the MLP as it is
            h = layer(h)
        w = h.squeeze(-1)  # (M, L)
        w = w * mask.to(w.dtype) / mask.sum().clamp_min(1).to(w.dtype)  # length-normalised
        return w @ keys  # (M, D)

    def key_part(self, keys: torch.Tensor) -> torch.Tensor:
        """B k + b of the first layer for behaviours (..., D) -> (..., H): it depends on the item only,
        so serving computes it once per item row at load (scoring/ranker_batch.py)."""
        first = self.mlp[0]
        _, w_k, w_diff, _ = first.weight.split(keys.shape[-1], dim=1)  # each (H, D)
        return keys @ (w_k - w_diff).T + first.bias  # (..., H)

    def forward_folded(self, query: torch.Tensor, keys: torch.Tensor, key_part: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """forward_shared_keys with the whole first layer as ONE matrix product per sequence.

        A q + B k + b + C (q*k), summed over D, is q . P[:, l, :] + key_part[l] with
        P[d, l, h] = A[h, d] + k[l, d] C[h, d]: the query part rides in the pair product for free,
        where adding a precomputed (M, H) query term would cost one more pass over the (M, L, H)
        activations, the largest tensor here. P costs L*H*D to build, once per sequence.
        """
        # query (M, D), keys (L, D), key_part (L, H) = self.key_part(keys), mask (L,)
        first = self.mlp[0]
        d, (n_l, n_h) = query.shape[-1], key_part.shape
        w_q, _, w_diff, w_prod = first.weight.split(d, dim=1)  # each (H, D)
        pair = keys.T.unsqueeze(-1) * w_prod.T.unsqueeze(1) + (w_q + w_diff).T.unsqueeze(1)  # (D, L, H)
        h = torch.addmm(key_part.reshape(1, -1), query, pair.reshape(d, n_l * n_h)).view(len(query), n_l, n_h)  # (M, L, H)
        for layer in list(self.mlp)[1:]:  # the rest of the MLP as it is; ReLU in place (serving, no autograd)
            h = torch.relu_(h) if isinstance(layer, nn.ReLU) else layer(h)
        w = h.squeeze(-1) * (mask.to(h.dtype) / mask.sum().clamp_min(1).to(h.dtype))  # (M, L) length-normalised
        return w @ keys  # (M, D)

    def forward_sets(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """forward_shared_keys for a batch: C queries per row against that row's sequence."""
        # query (B, C, D), keys (B, L, D), mask (B, L)
        first = self.mlp[0]
        w_q, w_k, w_diff, w_prod = first.weight.split(query.shape[-1], dim=1)  # each (H, D)
        per_q = query @ (w_q + w_diff).T + first.bias  # (B, C, H)
        per_k = keys @ (w_k - w_diff).T  # (B, L, H)
        per_pair = (query.unsqueeze(2) * keys.unsqueeze(1)) @ w_prod.T  # (B, C, L, H)
        h = per_pair + per_q.unsqueeze(2) + per_k.unsqueeze(1)  # (B, C, L, H)
        for layer in list(self.mlp)[1:]:
            h = layer(h)
        w = h.squeeze(-1) * mask.unsqueeze(1).to(h.dtype)  # (B, C, L)
        w = w / mask.sum(1).clamp_min(1).to(w.dtype)[:, None, None]  # length-normalised
        return w @ keys  # (B, C, D)


class CrossNetV2(nn.Module):
    """DCNv2 cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l (full-rank W)."""

    def __init__(self, dim: int, n_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=0.1)
            nn.init.zeros_(lin.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (B, D)
        for lin in self.layers:
            x = x0 * lin(x) + x  # (B, D)
        return x


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-12)
