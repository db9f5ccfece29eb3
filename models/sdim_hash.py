"""SDIM multi-round SimHash: the one hashing shared by trainer, BSE and ranker.

Fixed Gaussian projections R (d, m), sampled once from a seed and never trained. Bit k of x is
sign(x . R[:, k]) > 0; consecutive groups of `tau` bits form m/tau signatures, each an integer
bucket in [0, 2**tau). Versioned by (d, m, tau, seed): tables built with one hasher are only
valid for that hasher, so the BSE keys its tables by `SdimHasher.version`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SdimConfig:
    dim: int = 64
    n_hashes: int = 48  # m: the paper's production value; AUC is flat beyond it
    tau: int = 3  # bits per signature: 16 signatures x 8 buckets at m=48
    seed: int = 20220522

    def __post_init__(self) -> None:
        if self.n_hashes % self.tau != 0:
            raise ValueError(f"n_hashes ({self.n_hashes}) must be a multiple of tau ({self.tau})")
        if not 1 <= self.tau <= 16:
            raise ValueError(f"tau ({self.tau}) must be in [1, 16]")
        if self.dim < 1:
            raise ValueError(f"dim ({self.dim}) must be >= 1")

    @property
    def n_signatures(self) -> int:
        return self.n_hashes // self.tau

    @property
    def n_buckets(self) -> int:
        return 2**self.tau


class SdimHasher:
    """Maps embeddings (..., d) to bucket ids (..., m/tau) with values in [0, 2**tau)."""

    def __init__(self, config: SdimConfig = SdimConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.projection = rng.standard_normal((config.dim, config.n_hashes)).astype(np.float32)  # (d, m)
        self._weights = (1 << np.arange(config.tau, dtype=np.int64))  # (tau,) bit weights
        self._projection_t = torch.from_numpy(self.projection)

    @property
    def version(self) -> str:
        c = self.config
        return f"d{c.dim}-m{c.n_hashes}-t{c.tau}-s{c.seed}"

    def signatures_np(self, emb: np.ndarray) -> np.ndarray:
        c = self.config
        if emb.shape[-1] != c.dim:
            raise ValueError(f"embedding dim ({emb.shape[-1]}) != hasher dim ({c.dim})")
        bits = (emb.astype(np.float32) @ self.projection) > 0  # (..., m)
        bits = bits.reshape(*emb.shape[:-1], c.n_signatures, c.tau)  # (..., S, tau)
        return (bits.astype(np.int64) * self._weights).sum(-1)  # (..., S)

    def signatures(self, emb: torch.Tensor) -> torch.Tensor:
        c = self.config
        proj = self._projection_t.to(device=emb.device, dtype=emb.dtype)
        bits = (emb @ proj) > 0  # (..., m)
        bits = bits.reshape(*emb.shape[:-1], c.n_signatures, c.tau).long()  # (..., S, tau)
        weights = torch.as_tensor(self._weights, device=emb.device)
        return (bits * weights).sum(-1)  # (..., S)
