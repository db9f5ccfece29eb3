"""The one training loop: fit / evaluate / checkpoint / early stopping for every model.

A model's forward takes a batch dict and returns a dict with "loss"; that is the whole contract.
The same `fit` runs in-process and inside each Ray Train worker (pipelines/training/distributed.py),
where the model arrives wrapped for data parallelism and the samples arrive sharded.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.data.datasets import Samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = 10.0
    patience_epochs: int = 2  # stop after this many epochs without improving the monitored metric
    min_delta: float = 1e-4
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default
    device: str = "cpu"
    checkpoint_dir: str | None = None  # last.pt every epoch, best.pt on improvement; resumes from last.pt
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr ({self.lr}) must be > 0")


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def fit(
    model: nn.Module,
    train: Samples,
    cfg: TrainConfig,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    monitor: str = "loss",
    mode: Literal["min", "max"] = "min",
    epoch_callback: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train `model` on `train`, evaluating after every epoch; restores the best weights at the end.

    Args:
        evaluate: unwrapped model -> metrics (validation); None monitors the training loss.
        monitor / mode: the metric that drives early stopping and best-checkpoint selection.
        epoch_callback: called with (epoch, record) after each epoch (Ray workers report through it).
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    sign = 1.0 if mode == "max" else -1.0
    best_score, best_epoch, best_metrics, best_state = -math.inf, -1, {}, None
    history: list[dict] = []
    start_epoch, bad_epochs = 0, 0
    if ckpt and (ckpt / "last.pt").exists():
        state = torch.load(ckpt / "last.pt", map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_score, best_epoch, best_metrics, bad_epochs = state["best_score"], state["best_epoch"], state["best_metrics"], state["bad_epochs"]
        best_state = torch.load(ckpt / "best.pt", map_location=device) if (ckpt / "best.pt").exists() else None
        log.info("resumed from %s at epoch %d", ckpt / "last.pt", start_epoch)
    t_start = time.perf_counter()
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch), total=train.n_batches(cfg.batch_size),
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for batch in bar:
            out = model(_to(batch, device))
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(loss.item())
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        metrics = {"loss": float(np.mean(losses))} if evaluate is None else evaluate(unwrap(model))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, **metrics}
        history.append(record)
        score = sign * metrics[monitor]
        improved = score > best_score + cfg.min_delta
        if improved:
            best_score, best_epoch, best_metrics, bad_epochs = score, epoch + 1, metrics, 0
            best_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
        else:
            bad_epochs += 1
        log.info("epoch %d: %s%s", epoch + 1, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)},
                 " (best)" if improved else "")
        if ckpt:
            ckpt.mkdir(parents=True, exist_ok=True)
            if improved:
                torch.save(best_state, ckpt / "best.pt")
            torch.save({"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "history": history,
                        "best_score": best_score, "best_epoch": best_epoch, "best_metrics": best_metrics,
                        "bad_epochs": bad_epochs}, ckpt / "last.pt")
        if epoch_callback:
            epoch_callback(epoch + 1, record)
        if bad_epochs >= cfg.patience_epochs:
            stopped = epoch + 1 < cfg.epochs
            break
    if best_state is not None:
        unwrap(model).load_state_dict(best_state)
    return FitResult(best_epoch, best_metrics, history, time.perf_counter() - t_start, stopped)
