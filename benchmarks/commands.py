"""`recstream bench stream|models|serving|cascade|replay`: the benchmarks, each writing
reports/<name>.{json,md} (a typer app the `recstream` command mounts; heavy imports inside the
commands, so `recstream bench --help` stays light). One module per report: benchmarks/stream.py
(with benchmarks/bse.py and benchmarks/item_reads.py), benchmarks/models.py, benchmarks/serving.py,
benchmarks/cascade_ml100k.py, benchmarks/replay.py."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="Benchmarks that write JSON and Markdown under reports/.", no_args_is_help=True,
                  rich_markup_mode=None, add_completion=False)


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream bench --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command("stream")
def bench_stream(out_dir: str = typer.Option("reports", help="where stream.json and stream.md go (scale.* with --cluster)"),
                 events: int = typer.Option(100_000, help="events per throughput run"),
                 cluster: bool = typer.Option(False, "--cluster", help="instead: processors on a Redis Cluster of the "
                                              "benchmark's own, 1, 2 and 4 instances each, and a master failover "
                                              "under load (reports/scale.{json,md})"),
                 instances: list[int] = typer.Option([1, 2, 4], "--instances", help="--cluster: instance counts (repeat)"),
                 processor: list[str] = typer.Option(["bse-encoder", "popularity"], "--processor",
                                                     help="--cluster: processors measured (repeat)"),
                 repeats: int = typer.Option(3, help="--cluster: runs per instance count (the median is reported)")) -> None:
    """Processor throughput, freshness at 5,000 events/s, item-feature read paths, BSE bytes per
    user; with --cluster, scale-out on a Redis Cluster instead."""
    from pathlib import Path

    from deploy.local.commands import ensure_stack

    if cluster:
        from benchmarks.scale import ScaleConfig, run as run_scale

        try:
            cfg = ScaleConfig(events=events, instances=tuple(instances), processors=tuple(processor), repeats=repeats)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
    s = get_settings()
    ensure_stack(s)
    if cluster:
        _setup_logging()
        res = run_scale(s, Path(out_dir), cfg)
        report = "scale.md"
    else:
        from benchmarks.stream import run

        res = run(s, Path(out_dir), n_events=events)
        report = "stream.md"
    typer.echo((Path(out_dir) / report).read_text())
    typer.echo(json.dumps(res, indent=2))


@app.command("serving")
def bench_serving(out_dir: str = typer.Option("reports", help="where serving.json and serving.md go"),
                  items: int = typer.Option(100_000, help="catalogue size"),
                  duration_s: float = typer.Option(8.0, help="seconds per throughput / latency measurement"),
                  concurrency: int = typer.Option(16, help="closed-loop clients"),
                  port: int = typer.Option(0, help="Serve HTTP port on loopback (0: one the OS reports free)"),
                  ml100k: bool = typer.Option(True, help="also: the ML-100k cascade served over HTTP (every prefix) vs offline"),
                  ml100k_seeds: list[int] = typer.Option([0, 1, 2], "--ml100k-seed", help="ML-100k training seeds (repeat)"),
                  cascade_set: list[str] = typer.Option([], "--cascade-set", help="override a CascadeConfig field for the "
                                                        "ML-100k cascade, FIELD=VALUE (repeat)"),
                  throughput: bool = typer.Option(True, help="the throughput/latency part")) -> None:
    """Bare Ray Serve hops vs the real pipeline (fused, split), ANN recall, ranker cost; loopback only."""
    import tempfile
    from pathlib import Path

    import ray
    from ray import serve

    from deploy.local import free_ports
    from benchmarks.serving import markdown, run

    from deploy.local.commands import ensure_stack

    s = get_settings()
    ensure_stack(s)
    port = port or free_ports(1)[0]
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="recstream-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    try:
        with tempfile.TemporaryDirectory(prefix="recstream-bench-serving-") as tmp:
            res = {}
            if throughput:
                from features.model_store import artifacts_root

                res.update(run(s, Path(tmp), f"http://127.0.0.1:{port}", n_items=items, duration_s=duration_s,
                               concurrency=concurrency, progress=typer.echo, demo_artifacts=artifacts_root()))
            if ml100k:
                res.update(_ml100k_served_vs_offline(s, Path(tmp), f"http://127.0.0.1:{port}", tuple(ml100k_seeds),
                                                     tuple(cascade_set)))
    finally:
        serve.shutdown()
        ray.shutdown()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res.update({f"{part}_measured_at": stamp for part, ran in (("throughput", throughput), ("ml100k", ml100k)) if ran})
    previous = out / "serving.json"
    if previous.exists() and not (throughput and ml100k):
        # A part not re-run keeps its numbers (and its own measured_at) from the last run.
        old = json.loads(previous.read_text())
        res = {**{k: v for k, v in old.items() if k not in res}, **res}
    (out / "serving.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (out / "serving.md").write_text(markdown(res))
    typer.echo((out / "serving.md").read_text())


def _ml100k_served_vs_offline(s: Settings, work, base_url: str, seeds: tuple[int, ...], cascade_set: tuple[str, ...]) -> dict:
    """ML-100k through the stream into scratch topics and keys, then the cascade per seed served
    over HTTP (benchmarks.serving.ml100k_cascade_served)."""
    import uuid

    from benchmarks.serving import ml100k_cascade_served
    from recstream.kafka_io import ensure_topics

    tag = f"ml{uuid.uuid4().hex[:6]}"
    scratch = s.model_copy(update={"events_topic": f"{tag}.events", "dlq_topic": f"{tag}.events.dlq",
                                   "impressions_topic": f"{tag}.impressions", "redis_prefix": tag})
    ensure_topics(scratch)
    res = ml100k_cascade_served(scratch, work, base_url, seeds, cascade_set, progress=typer.echo)
    typer.echo(f"ML-100k cascade Recall@20 served {res['cascade_recall_at_20_ml100k']:.4f} ± "
               f"{res['cascade_recall_at_20_ml100k_std']:.4f} over {len(seeds)} seeds; offline path "
               f"{res['offline_recall_at_20_ml100k']:.4f}")
    return res


@app.command("models")
def bench_models(
    out_dir: Path = typer.Option(Path("reports"), help="where models.json and models.md go"),
    artifacts_dir: Optional[Path] = typer.Option(None, help="also save every trained model here"),
    quick: bool = typer.Option(False, help="tiny sizes: checks the plumbing, the numbers mean nothing"),
    progress: bool = typer.Option(True),
    section: Optional[list[str]] = typer.Option(None, help="re-run only these parts (speed, ml100k, synthetic); "
                                                "other keys are kept from the existing models.json"),
) -> None:
    """Run the model benchmark (ML-100k retrieval, synthetic SDIM/attention/DIN AUC, SDIM speed)."""
    from benchmarks import models as b
    from pipelines.data.synthetic import SyntheticConfig

    _setup_logging()
    kwargs = {}
    if quick:
        kwargs = dict(synthetic=SyntheticConfig(n_users=300, n_items=200, seq_len=120, n_impressions=6), seeds=(0, 1),
                      ml100k_epochs_cap=1, synthetic_epochs_cap=1, speed_lengths=(1000, 3000))
    if section:
        kwargs["sections"] = tuple(section)
    results = b.run_bench(out_dir, artifacts_dir, progress=progress, **kwargs)
    typer.echo(json.dumps(results, indent=2))


@app.command("cascade")
def bench_cascade(out_dir: Path = typer.Option(Path("reports"), help="where cascade.json and cascade.md go"),
                  seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="seeds to run (repeat the option)"),
                  set_: Optional[list[str]] = typer.Option(None, "--set", help="FIELD=VALUE over CascadeConfig's defaults "
                                                           "(pipelines/training/cascade.py), e.g. --set distill_epochs=1"),
                  reuse: bool = typer.Option(False, help="take a seed's result from cascade_runs/seed<N>.json when it "
                                             "was run with the same settings")) -> None:
    """The three-stage cascade on ML-100k, each stage trained for its place: every prefix's Recall@20 / NDCG@20."""
    from benchmarks.cascade_ml100k import run
    from pipelines.training.cascade import config_from_overrides

    _setup_logging()
    try:
        cfg = config_from_overrides(set_ or [])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    run(list(seeds), cfg, out_dir, reuse=reuse)
    typer.echo((out_dir / "cascade.md").read_text())


@app.command("replay")
def bench_replay(out_dir: str = typer.Option("reports", help="where replay.json and replay.md go"),
          impressions: int = typer.Option(100_000, help="simulated impressions per log"),
          reps: int = typer.Option(50, help="independent logs for the error and coverage figures"),
          n_boot: int = typer.Option(200, help="bootstrap resamples per log"),
          real_path_requests: int = typer.Option(300, help="requests served by the real request path (small random "
                                                           "models) whose replay gives served_order_reproduced_share; "
                                                           "0: skip")) -> None:
    """Off-policy estimators' error and 95% interval coverage on 100k simulated impressions; replay speed;
    how much of the real request path's served order replay gives back."""
    from benchmarks.replay import run as run_bench

    res = run_bench(out_dir, n=impressions, reps=reps, n_boot=n_boot, real_path_requests=real_path_requests)
    typer.echo((Path(out_dir) / "replay.md").read_text())
    typer.echo(json.dumps(res, indent=2))
