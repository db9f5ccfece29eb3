"""SDIM long-term interest (Cao et al., CIKM 2022): the training path and the serving (bucket) path.

Both use the one `SdimHasher` (models/sdim_hash.py), so a ranker trained end to end with these
signatures is served exactly by the BSE's bucket tables:

    interest(c) = mean_j  normalise( sum_{b : sig_j(e_b) = sig_j(e_c)} e_b )      (empty bucket -> 0)

- `SdimInterest` (torch, training): per sample, collisions between the candidate and each
  behaviour, O(L * S * d); gradients flow into the behaviour embeddings (hashing is a constant).
- `build_bucket_tables` (numpy, BSE side): per signature j and bucket value s, the sum and count of
  the behaviour embeddings hashing there; tables (S, 2**tau, d).
- `sdim_interest_from_tables` (numpy or torch, ranker side): O(S * d) per candidate, independent of L.

Tests check both paths against an independent plain loop, tests/sdim_reference.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.layers import l2_normalize
from models.sdim_hash import SdimConfig, SdimHasher

__all__ = [
    "SdimInterest",
    "build_bucket_tables",
    "normalize_tables",
    "sdim_interest_from_tables",
]


class SdimInterest(nn.Module):
    """Training path: long-term interest of each sample's candidate over its own sequence."""

    def __init__(self, config: SdimConfig = SdimConfig()):
        super().__init__()
        self.config = config
        self.hasher = SdimHasher(config)

    def forward(self, cand_emb: torch.Tensor, seq_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # cand_emb (B, d), seq_emb (B, L, d), mask (B, L) true on real behaviours
        with torch.no_grad():
            seq_sig = self.hasher.signatures(seq_emb)  # (B, L, S)
            cand_sig = self.hasher.signatures(cand_emb)  # (B, S)
            collide = (seq_sig == cand_sig.unsqueeze(1)) & mask.unsqueeze(-1)  # (B, L, S), padding never collides
        bucket_sum = torch.einsum("bls,bld->bsd", collide.to(seq_emb.dtype), seq_emb)  # (B, S, d)
        return l2_normalize(bucket_sum).mean(1)  # (B, d); an empty bucket stays the zero vector

    def forward_shared(self, cand_emb: torch.Tensor, seq_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same as forward for M candidates against ONE sequence: the bucket tables are built once
        from the sequence (as the BSE does), then each candidate gathers its S buckets."""
        # cand_emb (M, d), seq_emb (L, d), mask (L,)
        c = self.config
        with torch.no_grad():
            seq_sig = self.hasher.signatures(seq_emb)  # (L, S)
            cand_sig = self.hasher.signatures(cand_emb)  # (M, S)
            member = F.one_hot(seq_sig, c.n_buckets).to(seq_emb.dtype) * mask.unsqueeze(-1).unsqueeze(-1)  # (L, S, 2**tau)
        tables = torch.einsum("lsb,ld->sbd", member, seq_emb)  # (S, 2**tau, d) bucket sums
        return sdim_interest_from_tables(tables, cand_sig)  # (M, d)


def sdim_interest_sets(hasher: SdimHasher, cand_emb: torch.Tensor, seq_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`SdimInterest.forward_shared` for a batch of rows, each with C candidates and its own
    sequence: tables built once per row, then each candidate gathers its S buckets (training on
    candidate sets: O(n*S*d + C*S*d) per row, n the row's real behaviours, instead of O(C*L*S*d)).

    Only the real behaviours are hashed and summed (index_add over the mask's entries), so a batch
    padded to a long window (the ranker sees each user's whole history, up to ~740 on ML-100k,
    the median ~65) costs what its behaviours cost, not what its padding costs."""
    # cand_emb (B, C, d), seq_emb (B, L, d), mask (B, L)
    b, n_c, d = cand_emb.shape
    n_sig, n_buckets = hasher.config.n_signatures, hasher.config.n_buckets
    row_b, row_l = mask.nonzero(as_tuple=True)  # (n,) each: the real behaviours
    emb = seq_emb[row_b, row_l]  # (n, d)
    with torch.no_grad():
        seq_sig = hasher.signatures(emb)  # (n, S)
        cand_sig = hasher.signatures(cand_emb)  # (B, C, S)
        offsets = torch.arange(n_sig, device=emb.device) * n_buckets  # (S,)
        dest = (row_b[:, None] * (n_sig * n_buckets) + offsets + seq_sig).reshape(-1)  # (n*S,) table row of each
    src = emb[:, None, :].expand(-1, n_sig, -1).reshape(-1, d)  # (n*S, d) each behaviour once per signature
    tables = seq_emb.new_zeros(b * n_sig * n_buckets, d).index_add(0, dest, src).view(b, n_sig * n_buckets, d)  # bucket sums
    normed = l2_normalize(tables)  # (B, S*2**tau, d): an empty bucket stays 0
    rows = cand_sig + offsets  # (B, C, S) rows of each table
    picked = torch.gather(normed, 1, rows.reshape(b, -1, 1).expand(-1, -1, d))  # (B, C*S, d)
    return picked.view(b, n_c, n_sig, d).mean(2)  # (B, C, d)


def build_bucket_tables(
    seq_emb: np.ndarray, hasher: SdimHasher, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """BSE side: bucket sums and counts of one user's behaviours.

    Args:
        seq_emb: (L, d) behaviour embeddings of the deployed ranker version.
        hasher: the versioned hasher the ranker was trained with.
        mask: (L,) bool, false on padding; None = all real.
    Returns:
        tables (S, 2**tau, d) float32 bucket sums; counts (S, 2**tau) int64.
    """
    c = hasher.config
    seq_emb = np.asarray(seq_emb, dtype=np.float32)
    if mask is not None:
        seq_emb = seq_emb[np.asarray(mask, dtype=bool)]
    sigs = hasher.signatures_np(seq_emb)  # (L, S)
    tables = np.zeros((c.n_signatures, c.n_buckets, c.dim), dtype=np.float32)
    counts = np.zeros((c.n_signatures, c.n_buckets), dtype=np.int64)
    cols = np.broadcast_to(np.arange(c.n_signatures), sigs.shape)  # (L, S)
    np.add.at(tables, (cols, sigs), seq_emb[:, None, :])
    np.add.at(counts, (cols, sigs), 1)
    return tables, counts


def normalize_tables(tables):
    """L2-normalise each bucket sum (..., d); zero buckets stay zero. numpy or torch."""
    if isinstance(tables, torch.Tensor):
        return l2_normalize(tables)
    norms = np.linalg.norm(tables, axis=-1, keepdims=True)
    return np.where(norms > 0, tables / np.maximum(norms, 1e-12), 0.0).astype(tables.dtype, copy=False)


def sdim_interest_from_tables(tables, cand_sigs, normalized: bool = False):
    """Ranker side: SDIM long-term interest of N candidates from one user's bucket tables.

    Args:
        tables: (S, B, d) float bucket sums (numpy or torch), B = 2**tau buckets per signature.
        cand_sigs: (N, S) int bucket ids of the candidates under the same hasher.
        normalized: tables are already L2-normalised per bucket (skips that O(S*B*d) step).
    Returns:
        (N, d): mean over the S signatures of the L2-normalised bucket sum each candidate falls in;
        an empty bucket contributes a zero vector (and still counts in the mean).
    """
    normed = tables if normalized else normalize_tables(tables)
    n_sig = normed.shape[0]
    if isinstance(normed, torch.Tensor):
        n_buckets = normed.shape[1]
        cand_sigs = torch.as_tensor(cand_sigs, device=normed.device, dtype=torch.long)
        flat = cand_sigs + torch.arange(n_sig, device=normed.device) * n_buckets  # (N, S) rows of the (S*B, d) table
        # fused gather + mean over the S signatures (no (N, S, d) intermediate)
        return F.embedding_bag(flat, normed.reshape(n_sig * n_buckets, -1), mode="mean")  # (N, d)
    return normed[np.arange(n_sig), np.asarray(cand_sigs)].mean(1)  # (N, S, d) -> (N, d)
