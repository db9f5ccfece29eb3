"""Inference backends for HCN's user tower, the part of the coarse stage that runs per request.

HCN's interests for one user are dozens of small operations on (1, K, d) tensors (soft k-means
steps, two cross attentions, layer norms): eager torch spends most of their time dispatching
them, not computing. `torchscript` traces the tower once per loaded version and freezes it
(weights folded in as constants), which removed two thirds of that time here
(`recstream bench serving`: in_process_coarse_ms_eager vs _torchscript). The candidates' side
(a gather and K dot products) stays eager; it is already one matrix product.

A trace records the operations one example took, so it is checked at load against eager torch on
histories that are empty, short and full: outside 1e-5, or when tracing fails, the version serves
eagerly and a warning says why. Answers never depend on the backend beyond that tolerance.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Backend = Literal["eager", "torchscript"]

# largest difference from eager torch a traced tower may show at load (unit vectors, scaled interests)
TRACE_TOLERANCE = 1e-5


class _Interests(nn.Module):
    """HCN.interests(batch)[0] with tensors as arguments, as tracing needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user: torch.Tensor, hist: torch.Tensor, user_feats: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"user": user, "hist": hist}
        if user_feats is not None:
            batch["user_feats"] = user_feats
        return self.model.interests(batch)[0]


def _examples(model: nn.Module, device: str, n_user_feats: int) -> list[tuple[torch.Tensor, ...]]:
    """(user, hist[, user_feats]) of one user: empty, short and full histories of random items."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    out = []
    for n_real in (0, max(1, c.short_len // 2), c.long_len):
        hist = torch.zeros(1, c.long_len, dtype=torch.long)
        if n_real:
            hist[0, -n_real:] = torch.randint(1, c.n_items, (n_real,), generator=g)
        args = (torch.randint(0, c.n_users, (1,), generator=g).to(device), hist.to(device))
        if n_user_feats:
            args += (torch.randn(1, n_user_feats, generator=g).to(device),)
        out.append(args)
    return out


def hcn_user_tower(model: nn.Module, backend: Backend, device: str, uses_user_features: bool,
                   label: str = "") -> tuple[Callable[..., torch.Tensor], Backend]:
    """(tower(user (1,), hist (1, long_len)[, user_feats (1, Fu)]) -> (1, K, d), the backend it runs).

    Args:
        model: a loaded HCN in eval mode; backend: the one asked for; label: for the warning."""
    eager = _Interests(model).eval()
    if backend == "eager":
        return eager, "eager"
    examples = _examples(model, device, model.config.n_user_feats if uses_user_features else 0)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # tracer notes on shape checks (constant at serving: one user, long_len behaviours) and
            # TorchScript's deprecation in favour of torch.compile (which compiles C++ per version
            # load, tens of seconds here): the check below is what vouches for the trace
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            traced = torch.jit.freeze(torch.jit.trace(eager, examples[-1], check_trace=False))
            worst = max(float((traced(*args) - eager(*args)).abs().max()) for args in examples)
    except Exception as e:  # an operation tracing cannot record: eager is always right
        log.warning("%s: HCN user tower not traced (%s: %s); serving it eagerly", label, type(e).__name__, e)
        return eager, "eager"
    if not worst <= TRACE_TOLERANCE:
        log.warning("%s: traced HCN user tower differs from eager by %.3g (> %g); serving it eagerly", label, worst,
                    TRACE_TOLERANCE)
        return eager, "eager"
    return traced, "torchscript"
