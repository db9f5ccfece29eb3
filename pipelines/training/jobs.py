"""A training job: which model on which data with which settings, runnable anywhere.

`TrainJob` is a small picklable spec, so the same job runs in-process (`run_job`) or on each Ray
Train worker (`pipelines/training/distributed.py`), where every worker builds the data itself and
trains on its shard.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from models import MODELS, DataShape, build_model
from pipelines.data.datasets import (
    Splits,
    build_ml100k_ctr,
    build_ml100k_retrieval,
    build_synthetic_ctr,
    build_synthetic_retrieval,
)
from pipelines.data.movielens import DEFAULT_PROTOCOL, PROTOCOLS
from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.loop import FitResult, TrainConfig, fit, seed_everything
from pipelines.training.metrics import evaluate_ranking, evaluate_retrieval

log = logging.getLogger(__name__)

DATASETS = ("ml100k", "synthetic")
FEATURE_SOURCES = ("none", "feast")
FEATURE_MODELS = tuple(name for name, spec in MODELS.items() if spec.takes_features)  # take dense stream features
ML100K_HIST_LEN = 200  # behaviours kept per sample on ML-100k (the median user has ~65 ratings)


@dataclass(frozen=True)
class TrainJob:
    model: str = "two_tower"
    data: str = "ml100k"
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # merged over the per-data defaults
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    eval_ks: tuple[int, ...] = (20,)
    # "feast": user/item feature inputs from the Feast offline store the stream filled, joined
    # point-in-time (pipelines/data/stream_features.py); "none": ids and sequences only
    features: str = "none"
    # ML-100k evaluation protocol (pipelines.data.movielens.PROTOCOLS): tie order, history, mask
    protocol: str = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol ({self.protocol!r}) must be one of {sorted(PROTOCOLS)}")
        if self.model not in MODELS:
            raise ValueError(f"model ({self.model!r}) must be one of {sorted(MODELS)}")
        if self.data not in DATASETS:
            raise ValueError(f"data ({self.data!r}) must be one of {DATASETS}")
        if self.features not in FEATURE_SOURCES:
            raise ValueError(f"features ({self.features!r}) must be one of {FEATURE_SOURCES}")
        if self.features != "none" and self.model not in FEATURE_MODELS:
            raise ValueError(f"features ({self.features!r}) is for the models {FEATURE_MODELS}, not {self.model!r}")
        if self.features != "none" and self.data != "ml100k":
            raise ValueError(f"features ({self.features!r}) needs data 'ml100k' (the dataset the stream processed), "
                             f"not {self.data!r}")

    @property
    def task(self) -> str:
        return MODELS[self.model].task

    @property
    def monitor(self) -> str:
        return f"recall_at_{self.eval_ks[0]}" if self.task == "retrieval" else "auc"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainJob":
        """Inverse of to_dict (the manifest keeps the job that trained a model)."""
        d = dict(d)
        if isinstance(d.get("train"), dict):
            d["train"] = TrainConfig(**d["train"])
        if isinstance(d.get("synthetic"), dict):
            d["synthetic"] = SyntheticConfig(**d["synthetic"])
        if "eval_ks" in d:
            d["eval_ks"] = tuple(d["eval_ks"])
        # jobs saved before protocols were named ran on what is now "strict_time"
        d.setdefault("protocol", "strict_time")
        return cls(**d)


@lru_cache(maxsize=4)
def _splits(data: str, task: str, synthetic: SyntheticConfig, protocol: str = DEFAULT_PROTOCOL) -> Splits:
    if data == "synthetic":
        return build_synthetic_ctr(synthetic) if task == "ranking" else build_synthetic_retrieval(synthetic, ML100K_HIST_LEN)
    if task == "retrieval":
        return build_ml100k_retrieval(ML100K_HIST_LEN, protocol=protocol)
    return build_ml100k_ctr(ML100K_HIST_LEN, protocol=protocol)


@lru_cache(maxsize=2)
def _feature_splits(data: str, task: str, synthetic: SyntheticConfig, repo_dir: str, protocol: str) -> Splits:
    from features.feast_repo import open_repo
    from pipelines.data.stream_features import attach_stream_features

    return attach_stream_features(_splits(data, task, synthetic, protocol), open_repo(repo_dir))


def load_splits(job: TrainJob, repo=None) -> Splits:
    """The job's data; with features="feast" joined from `repo` (default: the deployment's Feast
    repository, `features.feast_repo.repo_for_settings` of the RECSTREAM_* settings)."""
    if job.features == "none":
        return _splits(job.data, job.task, job.synthetic, job.protocol)
    if repo is None:
        from features.feast_repo import repo_for_settings
        from recstream.settings import get_settings

        repo = repo_for_settings(get_settings())
    return _feature_splits(job.data, job.task, job.synthetic, str(repo.repo_dir), job.protocol)


def model_config(job: TrainJob, splits: Splits) -> Any:
    """The model's config: dimensions from the data, per-data defaults, then the job's overrides."""
    spec = MODELS[job.model]
    long_len = job.synthetic.seq_len if job.data == "synthetic" else ML100K_HIST_LEN
    shape = DataShape(dims=splits.model_dims(), long_len=long_len, hist_len=ML100K_HIST_LEN)
    cfg: dict[str, Any] = {**spec.defaults, **spec.data_config(shape)}
    if job.features != "none":
        if splits.train.user_feats is None or splits.train.item_feats is None:
            raise ValueError(f"job features={job.features!r} but the training samples carry no user/item features")
        cfg.update(splits.n_feats)
    cfg.update(job.model_overrides)
    return build_model(job.model, cfg).config


def build(job: TrainJob, splits: Splits) -> nn.Module:
    seed_everything(job.train.seed)
    model = build_model(job.model, model_config(job, splits))
    if hasattr(model, "set_item_categories"):
        model.set_item_categories(torch.as_tensor(splits.item_cat))
    start = MODELS[job.model].start
    if start is not None:  # e.g. popularity starts at the count optimum; training only refines it
        start(model, np.bincount(splits.train.item, minlength=model.config.n_items))
    return model


def evaluator(job: TrainJob, splits: Splits, which: str = "valid") -> Callable[[nn.Module], dict[str, float]]:
    samples = getattr(splits, which)
    if job.task == "retrieval":
        feats = splits.catalogue_item_feats if job.features != "none" else None
        return lambda m: evaluate_retrieval(m, samples, splits.catalogue, job.eval_ks, catalogue_item_feats=feats)
    return lambda m: evaluate_ranking(m, samples)


@dataclass
class JobResult:
    model: nn.Module
    splits: Splits
    fit: FitResult
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    # distributed runs only (pipelines/training/distributed.py): one record per worker
    workers: list[dict[str, Any]] = field(default_factory=list)


def run_job(job: TrainJob, rank: int = 0, world_size: int = 1,
            wrap: Callable[[nn.Module], nn.Module] | None = None,
            epoch_callback: Callable[[int, dict], None] | None = None,
            evaluate_test: bool = True, splits: Splits | None = None) -> JobResult:
    """Build data and model, train with the shared loop on this worker's shard, evaluate on test.

    Args:
        rank / world_size: this worker's shard of the training samples.
        wrap: wraps the model for data parallelism (Ray's prepare_model); the loop unwraps to evaluate.
        splits: train on these instead of load_splits(job) (e.g. a stream-feature-joined prefix).
    """
    splits = splits if splits is not None else load_splits(job)
    model = build(job, splits)
    if getattr(model, "closed_form", False):
        result = _fit_closed_form(model, job, splits, epoch_callback)
    else:
        train = splits.train if world_size == 1 else splits.train.shard(rank, world_size)
        wrapped = wrap(model) if wrap else model
        result = fit(wrapped, train, job.train, evaluate=evaluator(job, splits), monitor=job.monitor, mode="max",
                     epoch_callback=epoch_callback)
    model.eval()
    test = evaluator(job, splits, "test")(model) if evaluate_test else {}
    return JobResult(model, splits, result, result.best_metrics, test)


def _fit_closed_form(model: nn.Module, job: TrainJob, splits: Splits,
                     epoch_callback: Callable[[int, dict], None] | None) -> FitResult:
    """Models with nothing to learn by gradient steps (count popularity, ItemKNN) are fitted from
    the training interactions in one pass. Every worker of a distributed job fits on all of them:
    statistics over a shard would be different ones, and the pass is cheap."""
    t0 = time.perf_counter()
    model.fit_interactions(torch.as_tensor(splits.train.user), torch.as_tensor(splits.train.item))
    metrics = evaluator(job, splits)(model)
    record = {"epoch": 1, "train_loss": float("nan"), "seconds": time.perf_counter() - t0, **metrics}
    if epoch_callback:
        epoch_callback(1, record)
    return FitResult(1, metrics, [record], record["seconds"], False)


def save_job(job: TrainJob, result: JobResult, name: str | None = None, version: str | None = None,
             root=None, extra: dict[str, Any] | None = None) -> Any:
    """Save a trained job as an artefact (manifest: the job, fit history, feature vector names)."""
    from pipelines.training.artifacts import save_artifact

    return save_artifact(name or job.model, version, result.model, result.model.config, result.splits.vocabs,
                         {"valid": result.valid_metrics, "test": result.test_metrics}, result.splits.data_window,
                         root=root, extra={"job": job.to_dict(), "fit_history": result.fit.history, **(extra or {})},
                         feature_vectors=_used_vectors(job, result))


def _used_vectors(job: TrainJob, result: JobResult) -> dict[str, Any] | None:
    """The feature vector names the trained model takes (an override may switch one side off)."""
    meta = result.splits.meta.get("features")
    if job.features == "none" or meta is None:
        return None
    cfg = result.model.config
    return {"source": meta["source"],
            "user_vector_names": meta["user_vector_names"] if getattr(cfg, "n_user_feats", 0) else [],
            "item_vector_names": meta["item_vector_names"] if getattr(cfg, "n_item_feats", 0) else []}
