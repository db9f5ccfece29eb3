"""`recstream train | evaluate`: the training CLI (a typer app the `recstream` command mounts).

    python -m pipelines.training.commands train --model two_tower --data ml100k --epochs 10
    python -m pipelines.training.commands train --model ranker --data synthetic --workers 2
    python -m pipelines.training.commands train --model ranker --data ml100k --features feast
    python -m pipelines.training.commands evaluate --name two_tower
    python -m pipelines.training.commands train cascade --version v1   # the three stages, promoted if they earn it

`train` is a group: without a sub-command it trains one model (its options); `train cascade`
trains the whole cascade (pipelines/training/cascade.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional

import typer

from models import MODELS

app = typer.Typer(help="Train, evaluate and benchmark recstream models.", no_args_is_help=True)
log = logging.getLogger(__name__)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


train_app = typer.Typer(help="Train one model and save it under artifacts/models/<name>/<version>/.", add_completion=False)
app.add_typer(train_app, name="train")


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    model: str = typer.Option("two_tower", help=f"one of {', '.join(MODELS)}"),
    data: str = typer.Option("ml100k", help="ml100k or synthetic"),
    epochs: Optional[int] = typer.Option(None, min=1, help="default: the model's for the data (pipelines/training/defaults.py)"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="default: the model's for the data"),
    lr: Optional[float] = typer.Option(None, min=0.0, help="default: the model's for the data"),
    patience_epochs: Optional[int] = typer.Option(None, min=1, help="early stopping patience; default: the model's"),
    protocol: str = typer.Option("standard", help="ML-100k evaluation protocol: standard (stable time order, ties in "
                                 "file order, train+valid items masked) or strict_time (the earlier variant)"),
    workers: int = typer.Option(1, min=1, help="1 = in-process; >1 = Ray Train data-parallel workers"),
    gpu: bool = typer.Option(False, help="one GPU per Ray Train worker"),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads per worker"),
    seed: int = typer.Option(0),
    name: Optional[str] = typer.Option(None, help="artefact name (default: the model name)"),
    version: Optional[str] = typer.Option(None, help="artefact version (default: a UTC timestamp)"),
    artifacts_dir: Optional[Path] = typer.Option(None, help="artefacts root (default $RECSTREAM_ARTIFACTS_DIR or ./artifacts)"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="per-epoch checkpoints; a rerun resumes from them"),
    synthetic_users: int = typer.Option(6000, min=1),
    synthetic_seq_len: int = typer.Option(500, min=1),
    synthetic_items: int = typer.Option(1000, min=1),
    use_user_id: Optional[bool] = typer.Option(None, help="ranker: user id embedding (default: off on synthetic)"),
    features: str = typer.Option("none", help="none | feast: ranker/hcn user and item feature inputs from the Feast "
                                 "offline store the feature-writer filled (ml100k; joined point-in-time at t - 1 ms; "
                                 "stream with `recstream process feature-writer --offline-history` first)"),
    feature_sides: str = typer.Option("user,item", help="with --features feast: which inputs to feed, user | item | "
                                      "user,item (HCN on ML-100k did best with user only: see the README)"),
    progress: bool = typer.Option(True, help="tqdm progress bars"),
) -> None:
    """Train one model and save it under artifacts/models/<name>/<version>/. An ML-100k HCN or ranker is
    marked latest only if the cascade with it keeps its validation Recall@20 (exit 1 otherwise)."""
    if ctx.invoked_subcommand is not None:  # `train cascade ...`: the sub-command does the work
        return
    from models.layers import Vocab  # noqa: F401  (keeps import errors here, not mid-training)
    from pipelines.data.synthetic import SyntheticConfig
    from pipelines.training.defaults import default_job
    from pipelines.training.jobs import run_job, save_job

    _setup_logging()
    overrides = {}  # over the model defaults (chosen on validation, or fixed: defaults.py)
    if MODELS.get(model) and MODELS[model].task == "ranking":
        overrides["use_user_id"] = use_user_id if use_user_id is not None else data != "synthetic"
    sides = {x.strip() for x in feature_sides.split(",") if x.strip()}
    if not sides or not sides <= {"user", "item"}:
        raise typer.BadParameter(f"--feature-sides ({feature_sides!r}) must be user, item or user,item")
    if features != "none":
        overrides.update({f"n_{side}_feats": 0 for side in ("user", "item") if side not in sides})
    try:
        job = default_job(
            model, data, model_overrides=overrides,
            train_overrides={"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience_epochs": patience_epochs,
                             "seed": seed, "num_threads": threads,
                             "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None, "progress": progress},
            synthetic=SyntheticConfig(n_users=synthetic_users, seq_len=synthetic_seq_len, n_items=synthetic_items),
            features=features, protocol=protocol,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    from features.model_store import ArtifactNotFound, latest_version

    guarded = data == "ml100k" and model in ("hcn", "ranker") and (name or model) == model
    previous = None
    if guarded:
        try:
            previous = latest_version(model, artifacts_dir)
        except ArtifactNotFound:
            pass
    t0 = time.perf_counter()
    if workers > 1 or gpu:
        from pipelines.training.distributed import fit_distributed

        result = fit_distributed(job, num_workers=workers, use_gpu=gpu)
    else:
        result = run_job(job)
    seconds = time.perf_counter() - t0
    path = save_job(job, result, name, version, root=artifacts_dir, extra={"workers": workers, "train_seconds": seconds})
    typer.echo(json.dumps({"artifact": str(path), "train_seconds": round(seconds, 1), "valid": result.valid_metrics,
                           "test": result.test_metrics}, indent=2, default=float))
    if guarded:  # a coarse or fine stage earns `latest` only if the whole cascade keeps its validation recall
        from pipelines.training.promotion import guard_stage

        verdict = guard_stage(model, path.name, previous, artifacts_dir)
        typer.echo(verdict.message, err=not verdict.promoted)
        if not verdict.promoted:
            raise typer.Exit(1)


@train_app.command("cascade")
def train_cascade_command(
    version: str = typer.Option(..., help="artefact version of all three stages (two_tower, hcn, ranker)"),
    seed: int = typer.Option(0),
    features: str = typer.Option("none", help="none: ML-100k as the dataset gives it; feast: the splits the stream "
                                 "wrote to the Feast offline store (`jobs.load_splits`; the cascade models use ids and "
                                 "sequences only, so the features themselves are not fed)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="FIELD=VALUE over CascadeConfig's defaults, "
                                             "e.g. --set distill_epochs=1"),
    artifacts_dir: Optional[Path] = typer.Option(None, help="artefacts root (default $RECSTREAM_ARTIFACTS_DIR or ./artifacts)"),
    promote: bool = typer.Option(True, help="mark the versions latest if the promotion guard passes"),
    progress: bool = typer.Option(False, help="tqdm progress bars"),
) -> None:
    """Train the cascade (two-tower -> HCN -> ranker -> fusion), save the three stages as VERSION, and
    mark them latest only if no shorter cascade beats it on validation Recall@20 (exit 1 otherwise)."""
    from pipelines.training.cascade import PromotionRefused, config_from_overrides, save_cascade, train_cascade
    from pipelines.training.jobs import TrainJob, load_splits

    _setup_logging()
    if features not in ("none", "feast"):
        raise typer.BadParameter(f"--features ({features!r}) must be none or feast")
    try:
        cfg = config_from_overrides(set_ or [])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    # HCN's job names the retrieval splits; with features="feast" they are joined from the offline store
    splits = load_splits(TrainJob(model="hcn", data="ml100k", features=features))
    t0 = time.perf_counter()
    result = train_cascade(splits, cfg, seed, progress=progress)
    seconds = time.perf_counter() - t0
    summary = {"version": version, "train_seconds": round(seconds, 1), "fusion": result.fusion.model_dump(),
               "valid": result.valid}
    try:
        paths = save_cascade(result, splits, version, artifacts_dir, promote=promote)
    except PromotionRefused as e:
        typer.echo(json.dumps({**summary, "artifacts": {k: str(v) for k, v in e.paths.items()}, "promoted": False},
                              indent=2, default=float))
        for reason in e.reasons:
            typer.echo(reason, err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps({**summary, "artifacts": {k: str(v) for k, v in paths.items()}, "promoted": promote},
                          indent=2, default=float))


@app.command()
def evaluate(
    name: str = typer.Option(..., help="artefact name"),
    version: Optional[str] = typer.Option(None, help="default: latest"),
    split: str = typer.Option("test", help="valid or test"),
    artifacts_dir: Optional[Path] = typer.Option(None),
    protocol: Optional[str] = typer.Option(None, help="ML-100k evaluation protocol (standard | strict_time); default: "
                                           "the one the model was trained under (strict_time for artefacts saved "
                                           "before protocols were named)"),
) -> None:
    """Evaluate a saved model on the split of the data it was trained on (rebuilt from its manifest)."""
    from pipelines.training.artifacts import load_artifact
    from pipelines.training.jobs import TrainJob, evaluator, load_splits

    _setup_logging()
    if split not in ("valid", "test"):
        raise typer.BadParameter(f"split ({split!r}) must be valid or test")
    model, manifest = load_artifact(name, version, artifacts_dir)
    job_dict = manifest.get("extra", {}).get("job")
    if job_dict is None:
        raise typer.BadParameter(f"artefact {name}/{manifest['version']} has no training job in its manifest")
    job = TrainJob.from_dict(job_dict)
    if protocol is not None and protocol != job.protocol:
        if job.data == "ml100k":
            # the protocols split differently: some of one's test items are the other's training items
            log.warning("evaluating under protocol %s a model trained under %s: its training data may hold test items",
                        protocol, job.protocol)
        try:
            job = dataclasses.replace(job, protocol=protocol)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
    metrics = evaluator(job, load_splits(job), split)(model)
    typer.echo(json.dumps({"artifact": manifest["path"], "split": split, "protocol": job.protocol, **metrics},
                          indent=2, default=float))


if __name__ == "__main__":
    app()
