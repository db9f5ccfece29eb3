"""Ray Train wrapper: the same `TrainJob` and the same loop on several workers or GPUs.

Each worker builds the data itself (no large objects through the object store), trains on its
shard (`Samples.shard(rank, world_size)`) with the model wrapped by `ray.train.torch.prepare_model`
(DistributedDataParallel when world_size > 1, moved to the worker's GPU when use_gpu), and reports
each epoch's validation metrics. Rank 0 reports the final weights as a Ray checkpoint, which the
driver loads back into a fresh model, so the caller gets the same `JobResult` as `run_job`, plus
`workers`: what each worker did (rank, training samples in its shard, its own per-epoch training
loss, a digest of its initial and final weights), gathered to rank 0. Data parallelism keeps the
replicas identical, so every worker ends with the same weight digest, different from the initial one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path

import torch

from pipelines.training.jobs import JobResult, TrainJob, build, evaluator, load_splits, run_job
from pipelines.training.loop import FitResult

log = logging.getLogger(__name__)


def _weights_digest(model) -> str:
    """sha256 of the model's parameters and buffers, in state_dict order."""
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch as rt

    job: TrainJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rt.get_device()
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, device=str(device), progress=rank == 0 and job.train.progress))

    def report(epoch: int, record: dict) -> None:
        ray.train.report({k: v for k, v in record.items() if isinstance(v, (int, float))})

    initial: dict[str, str] = {}

    def wrap(model):
        initial["digest"] = _weights_digest(model)
        # some configurations leave parameters unused (e.g. the user embedding with use_user_id=False)
        return rt.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    result = run_job(job, rank=rank, world_size=world, wrap=wrap, epoch_callback=report, evaluate_test=False)
    mine = {"rank": rank, "n_train": len(result.splits.train.shard(rank, world)) if world > 1 else len(result.splits.train),
            "train_loss": [h["train_loss"] for h in result.fit.history],
            "initial_digest": initial["digest"], "final_digest": _weights_digest(result.model)}
    workers = [mine]
    if world > 1:
        import torch.distributed as dist

        workers = [None] * world
        dist.all_gather_object(workers, mine)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            torch.save({"state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()},
                        "fit": result.fit.to_dict(), "workers": workers}, Path(tmp) / "model.pt")
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"done": 1, "best_epoch": result.fit.best_epoch}, checkpoint=ckpt)


def fit_distributed(job: TrainJob, num_workers: int = 2, use_gpu: bool = False,
                    storage_path: str | None = None, cpus_per_worker: float = 1.0) -> JobResult:
    """Run `job` with Ray Train on `num_workers` workers; returns the trained model and metrics.

    Starts a local Ray instance if none is connected.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    storage = storage_path or tempfile.mkdtemp(prefix="recstream-ray-train-")
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"{job.model}-{job.data}", storage_path=storage),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train job {job.model}/{job.data} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=False)
    splits = load_splits(job)
    model = build(job, splits)
    model.load_state_dict(state["state_dict"])
    model.eval()
    fit = FitResult(**state["fit"])
    return JobResult(model, splits, fit, fit.best_metrics, evaluator(job, splits, "test")(model),
                     workers=sorted(state["workers"], key=lambda w: w["rank"]))
