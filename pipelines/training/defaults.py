"""Default hyper-parameters per (model, data): what `recstream train` uses when an option is not
given, and what the models benchmark trains with, so the two cannot drift apart.

How each was chosen is in its `chosen` text. The ML-100k retrieval values come from a grid search
on the validation split only (standard protocol; mean validation Recall@20 over the seeds listed)
by `python -m benchmarks.tune_ml100k`, which writes reports/ml100k_tuning.{json,md}; the test
split was never looked at to choose them. Where nothing was searched the text says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipelines.training.jobs import TrainJob
from pipelines.training.loop import TrainConfig


@dataclass(frozen=True)
class Hyper:
    train: dict[str, Any]  # TrainConfig fields
    model: dict[str, Any] = field(default_factory=dict)  # model config overrides
    chosen: str = "not tuned"


# What `recstream train` used for every model before per-model defaults existed.
GENERIC = Hyper({"epochs": 10, "batch_size": 512, "lr": 1e-3, "patience_epochs": 2})

# Same settings for the four synthetic CTR models, so that only the long-term block differs
# between them; up to 12 epochs with patience 2 lets each train to its validation-AUC peak.
_SYNTHETIC_CTR = Hyper({"epochs": 12, "batch_size": 256, "lr": 1e-3, "patience_epochs": 2}, {"use_user_id": False},
                       "not tuned: one setting shared by the four long-term blocks; users have few impressions "
                       "each, so a user-id embedding only memorises")

_TUNED = "validation grid, reports/ml100k_tuning.md (seeds 0, 1)"
DEFAULTS: dict[tuple[str, str], Hyper] = {
    # best of lr {1e-3, 3e-3} x temperature {0.05, 0.1}; both seeds peaked at the 12-epoch cap,
    # which the 3-minute training budget per seed (all ML-100k models together) keeps
    ("two_tower", "ml100k"): Hyper({"epochs": 12, "batch_size": 512, "lr": 3e-3, "patience_epochs": 2},
                                   {"temperature": 0.1}, _TUNED),
    # best of lr {1e-3, 3e-3}; the 3-epoch cap (about 20 s an epoch here) is what the 3-minute budget
    # leaves after the two-tower, and both seeds were still improving at it
    ("hcn", "ml100k"): Hyper({"epochs": 3, "batch_size": 512, "lr": 3e-3, "patience_epochs": 2}, {},
                             _TUNED + "; epoch cap from the 3-minute training budget, still improving at it"),
    ("popularity", "ml100k"): Hyper({"epochs": 1, "batch_size": 512, "lr": 3e-3, "patience_epochs": 2}, {},
                                    "not searched: starts at log counts, one epoch refines them"),
    ("pop_count", "ml100k"): Hyper({"epochs": 1}, {}, "nothing to choose: training counts"),
    # best of k {10, 20, 50, 100, 200, 500, 2000} x shrink {0, 10, 100}
    ("itemknn", "ml100k"): Hyper({"epochs": 1}, {"k_neighbours": 20, "shrink": 0.0}, "validation grid, "
                                 "reports/ml100k_tuning.md (deterministic: one run)"),
    # best of lr {1e-3, 3e-3} x reg {1e-3, 1e-2, 3e-2}, dim 64
    ("bpr", "ml100k"): Hyper({"epochs": 30, "batch_size": 1024, "lr": 3e-3, "patience_epochs": 3},
                             {"dim": 64, "reg": 1e-2}, _TUNED),
    **{(m, "synthetic"): _SYNTHETIC_CTR for m in ("ranker", "collision_attention", "full_attention", "din_last50")},
}


def defaults_for(model: str, data: str) -> Hyper:
    return DEFAULTS.get((model, data), GENERIC)


def default_job(model: str, data: str, epochs_cap: int | None = None, model_overrides: dict[str, Any] | None = None,
                train_overrides: dict[str, Any] | None = None, **job_fields: Any) -> TrainJob:
    """The (model, data) defaults as a TrainJob: `train_overrides` (None values ignored) over the
    training defaults, epochs at most `epochs_cap`, `model_overrides` over the model defaults."""
    train = default_train_config(model, data, **(train_overrides or {}))
    if epochs_cap is not None:
        train = dataclasses.replace(train, epochs=min(train.epochs, epochs_cap))
    return TrainJob(model=model, data=data, train=train,
                    model_overrides={**defaults_for(model, data).model, **(model_overrides or {})}, **job_fields)


def default_train_config(model: str, data: str, **overrides: Any) -> TrainConfig:
    """TrainConfig of the (model, data) defaults, with `overrides` (None values ignored) on top."""
    base = dataclasses.asdict(TrainConfig())
    base.update(defaults_for(model, data).train)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)
