"""An SDIM reference for tests, independent of the vectorised hasher and of the library's own
naive loop: bits recomputed one projection at a time from `hasher.projection`."""

from __future__ import annotations

import numpy as np


def naive_sdim(seq_emb: np.ndarray, cand_emb: np.ndarray, hasher) -> np.ndarray:
    """Per candidate and signature, sum the colliding behaviours, L2-normalise the sum, average
    over signatures. seq_emb (L, d), cand_emb (N, d) -> (N, d) float64."""
    tau, n_sig = hasher.config.tau, hasher.config.n_signatures

    def sig(x):  # (d,) -> list of n_sig ints
        bits = (x.astype(np.float32) @ hasher.projection) > 0
        return [sum(int(bits[j * tau + t]) << t for t in range(tau)) for j in range(n_sig)]

    seq_sigs = [sig(e) for e in seq_emb]
    out = np.zeros((len(cand_emb), seq_emb.shape[1]))
    for n, c in enumerate(cand_emb):
        cs = sig(c)
        for j in range(n_sig):
            s = np.zeros(seq_emb.shape[1])
            for e, es in zip(seq_emb, seq_sigs):
                if es[j] == cs[j]:
                    s += e
            norm = np.linalg.norm(s)
            if norm > 0:
                out[n] += s / norm
        out[n] /= n_sig
    return out
