"""The `recstream` command: the one module that reaches pipelines, services and deploy.

Start-up is kept light: `recstream --help` imports typer and this module only (about 0.3 s). Every
command imports what it needs (torch, ray, feast, pandas, pydantic settings) when it runs, and the
sub-commands other packages own (`train`, `evaluate`, `bench models`, `bse`) are listed from the
table in `_LAZY_COMMANDS` and imported only when one of them is invoked or asked for its help.
"""

from __future__ import annotations

import os

# Small matmuls on the serving and streaming paths (SimHash of candidates, feature math) stall
# on OpenBLAS worker threads when the cores are shared; one thread is faster there. Must be set
# before numpy loads. Training uses torch's own thread pool and is unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional

import click
import typer
from typer.core import TyperGroup

from recstream.logs import setup_logging

if TYPE_CHECKING:
    from recstream.settings import Settings


def get_settings() -> "Settings":
    """The process settings (pydantic-settings loads on first use, not at start-up). Invalid
    RECSTREAM_* values end the command with their message, not a traceback."""
    from pydantic import ValidationError

    from recstream.settings import get_settings as _get

    try:
        return _get()
    except ValidationError as e:
        typer.secho(f"error: invalid RECSTREAM_* settings: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


# Sub-commands owned by other packages, imported only when used:
#   group -> {command: (module, command name in that module's Typer app, or None for the whole app, short help)}
# tests/unit/recstream/test_cli.py checks the table against the modules.
_LAZY_COMMANDS: dict[str, dict[str, tuple[str, str | None, str]]] = {
    "recstream": {
        "train": ("pipelines.training.commands", "train",
                  "Train one model and save it under artifacts/models/<name>/<version>/."),
        "evaluate": ("pipelines.training.commands", "evaluate",
                     "Evaluate a saved model on the split of the data it was trained on (rebuilt from its manifest)."),
        "bse": ("pipelines.bse_commands", None, "BSE tables: rebuild for a new model version, inspect a user."),
        "replay": ("pipelines.replay.cli", None, "Offline A/B from the impression log: off-policy estimates with "
                   "intervals, traffic replay to two variants, a report with plots."),
        "feast": ("pipelines.feast_commands", None, "Feast repository: apply the definitions for this deployment's Redis."),
    },
    "bench": {
        "models": ("pipelines.training.commands", "bench",
                   "Run the model benchmark (ML-100k retrieval, synthetic SDIM/attention/DIN AUC, SDIM speed)."),
        "replay": ("pipelines.replay.cli", "bench",
                   "Off-policy estimators' error and 95% interval coverage on 100k simulated impressions; replay speed."),
    },
}


class _LazyGroup(TyperGroup):
    """A command group that lists some commands from `_LAZY_COMMANDS` and imports them on use.
    An absent optional package simply leaves its commands out."""

    lazy_key = ""

    def _lazy(self) -> dict[str, tuple[str, str | None, str]]:
        return _LAZY_COMMANDS.get(self.lazy_key, {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in self._lazy() if n not in self.commands)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self._lazy():
            return super().get_command(ctx, name)
        module, attr, help_text = self._lazy()[name]
        import importlib

        try:
            sub = typer.main.get_command(importlib.import_module(module).app)
        except ImportError as e:
            log.debug("optional command %s unavailable: %s", name, e)
            return None
        cmd = sub if attr is None else sub.commands[attr]  # type: ignore[attr-defined]
        cmd.name = name
        if attr is None:
            cmd.help = cmd.help or help_text
        self.commands[name] = cmd
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a lazy command's line comes from the table, without importing it."""
        from click.utils import make_default_short_help

        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = []
        for name in names:
            if name in self._lazy() and name not in self.commands:
                rows.append((name, make_default_short_help(self._lazy()[name][2], limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _RootGroup(_LazyGroup):
    lazy_key = "recstream"


class _BenchGroup(_LazyGroup):
    lazy_key = "bench"


app = typer.Typer(help="recstream: streaming, online-serving recommender platform.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, cls=_RootGroup)
stack_app = typer.Typer(help="Local Kafka (KRaft) + Redis stack.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(stack_app, name="stack")

log = logging.getLogger("recstream.cli")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
          json_logs: bool = typer.Option(False, "--json-logs", help="structured JSON log lines")) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO, json_lines=json_logs)


def _stack(settings: Settings):
    """The local stack on the ports the settings name (RECSTREAM_STACK_*_PORT)."""
    from deploy.local import LocalStack, StackConfig

    return LocalStack(StackConfig(home=settings.home, kafka_port=settings.stack_kafka_port,
                                  kafka_controller_port=settings.stack_kafka_controller_port,
                                  redis_port=settings.stack_redis_port))


def _ensure_stack(s: Settings) -> None:
    from recstream.errors import StackError
    from recstream.kafka_io import ensure_topics

    try:
        if not _external_servers():
            _stack(s).up()
        ensure_topics(s)
    except StackError as e:
        _fail(e)


def _external_servers() -> bool:
    """True when the user pointed us at their own Kafka and Redis."""
    return bool(os.environ.get("RECSTREAM_KAFKA_BOOTSTRAP") and os.environ.get("RECSTREAM_REDIS_URL"))


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(1)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and Redis (idempotent) and create the topics."""
    from recstream.errors import StackError
    from recstream.kafka_io import ensure_topics

    s = get_settings()
    try:
        st = _stack(s).up()
        ensure_topics(s)
        repo = _feast_repo(s)
    except StackError as e:
        _fail(e)
    typer.echo(json.dumps({**st.__dict__, "feast_repo": str(repo.repo_dir)}, indent=2))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local Kafka and Redis (whatever ports they were started on)."""
    _stack(get_settings()).down()
    typer.echo("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka and Redis are running and ready on the configured ports (exit 3 if not)."""
    st = _stack(get_settings()).status()
    typer.echo(json.dumps({**st.__dict__, "ready": st.ready}, indent=2))
    raise typer.Exit(0 if st.ready else 3)


@app.command()
def topics(partitions: Optional[int] = typer.Option(None, help="partitions for new topics")) -> None:
    """Create the platform's Kafka topics when missing."""
    from recstream.kafka_io import ensure_topics

    typer.echo("\n".join(ensure_topics(get_settings(), partitions)))


@app.command()
def produce(dataset: str = typer.Argument("ml100k", help="ml100k | synthetic"),
            limit: Optional[int] = typer.Option(None, help="produce at most this many events"),
            users: int = typer.Option(1000, help="synthetic: users"),
            items: int = typer.Option(5000, help="synthetic: items"),
            seq_len: int = typer.Option(200, help="synthetic: behaviours per user"),
            seed: int = typer.Option(0, help="synthetic: seed"),
            split: str = typer.Option("all", help="ml100k: all | train_valid (exactly the training interactions: "
                                                  "all but each user's last) | train | valid | test")) -> None:
    """Produce a dataset's events to the events topic."""
    import itertools

    from pipelines.produce import produce_events

    if dataset == "ml100k":
        from pipelines.data.movielens import ml100k_events

        from pipelines.data.movielens import SPLITS

        if split not in SPLITS:
            raise typer.BadParameter(f"split must be one of {', '.join(SPLITS)}, got {split!r}", param_hint="--split")
        events, total = ml100k_events(limit=limit, split=split), limit or 100_000
    elif dataset == "synthetic":
        from pipelines.data.synthetic import SyntheticConfig, generate_events

        try:  # the recent window (50 behaviours by default) never longer than the history
            cfg = SyntheticConfig(n_users=users, n_items=items, seq_len=seq_len, seed=seed,
                                  short_len=min(SyntheticConfig.short_len, seq_len))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        total = users * seq_len if limit is None else min(limit, users * seq_len)
        events = itertools.islice(generate_events(cfg), total)
    else:
        raise typer.BadParameter(f"dataset must be ml100k or synthetic, got {dataset!r}", param_hint="DATASET")
    n = produce_events(events, get_settings(), total=total)
    typer.echo(f"produced {n} events to {get_settings().events_topic}")


PROCESSORS = ("popularity", "bse-encoder", "feature-writer", "feature-publisher")


def _feast_repo(s: Settings):
    from features.feast_repo import repo_for_settings

    return repo_for_settings(s)


def _publisher(s: Settings, feast: bool, offline_history: bool = False):
    import redis

    from features.item_features import RedisItemFeatures
    from pipelines.stream.feature_publisher import FeaturePublisher

    return FeaturePublisher(redis.Redis.from_url(s.redis_url, decode_responses=True), s.redis_prefix,
                            repo=_feast_repo(s) if feast else None,
                            item_blobs=RedisItemFeatures.from_url(s.redis_url, prefix=s.redis_prefix),
                            offline_history=offline_history)


def _make_handler(name: str, s: Settings, embeddings: str, model_version: str, max_seq_len: int, feast: bool = True,
                  publish: str = "inline", offline_history: bool = False):
    import redis

    if name == "popularity":
        from pipelines.stream import PopularityHandler

        return PopularityHandler(redis.Redis.from_url(s.redis_url), s.redis_prefix, s.recent_items_max)
    if name == "bse-encoder":
        from features.bse import RedisBseStore, TableVersion
        from models.sdim_hash import SdimConfig, SdimHasher
        from pipelines.stream.bse_encoder import BseEncoderHandler, load_item_embeddings

        emb = load_item_embeddings(embeddings)
        version = TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb, model_version=model_version)
        store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, versions=[version], max_seq_len=max_seq_len)
        return BseEncoderHandler(store)
    if name == "feature-writer":
        from pipelines.stream.feature_writer import FeatureWriterHandler

        if publish not in ("inline", "separate"):
            raise typer.BadParameter(f"--publish must be inline or separate, got {publish!r}", param_hint="--publish")
        if offline_history and publish != "inline":
            raise typer.BadParameter("--offline-history needs --publish inline (the writer records each segment's "
                                     "state in its own publisher)", param_hint="--offline-history")
        return FeatureWriterHandler(redis.Redis.from_url(s.redis_url, decode_responses=True), s.redis_prefix,
                                    publisher=_publisher(s, feast, offline_history) if publish == "inline" else None)
    raise typer.BadParameter(f"unknown processor {name!r}; available: {', '.join(PROCESSORS)}", param_hint="NAME")


@app.command()
def process(name: str = typer.Argument("popularity", help="processor: " + " | ".join(PROCESSORS)),
            max_idle_s: Optional[float] = typer.Option(None, help="exit after this long without new events"),
            batch_max_records: int = typer.Option(2000, help="records per poll/apply batch"),
            metrics_port: int = typer.Option(0, help="serve Prometheus metrics on this port (0: off)"),
            embeddings: str = typer.Option("random:2000:0", help="bse-encoder: random:<n_items>[:<seed>] or artifact:<model>[/<version>]"),
            model_version: str = typer.Option("base", help="bse-encoder: ranker version whose embeddings feed the tables"),
            max_seq_len: int = typer.Option(10_000, help="bse-encoder: behaviours kept per user"),
            feast: bool = typer.Option(True, help="feature-writer/-publisher: publish to Feast (off: item blobs only)"),
            publish: str = typer.Option("inline", help="feature-writer: inline (one process) | separate (run "
                                                       "`process feature-publisher` too; for 20k+ events/s)"),
            offline_history: bool = typer.Option(False, help="feature-writer: an offline row per entity and distinct "
                                                 "event time, for training on a dataset streamed in bulk (backfill)"),
            exit_after_writes: Optional[int] = typer.Option(None, hidden=True, help="test hook: exit right after this "
                                                            "many state writes, before their Kafka commit")) -> None:
    """Run a stream processor (consumer group, manual commits, DLQ, exactly-once effect on Redis).

    feature-publisher is not a Kafka consumer: it publishes the feature-writer's outbox to Feast.
    """
    from prometheus_client import start_http_server

    from pipelines.stream import ProcessorConfig, StreamProcessor

    s = get_settings()
    if metrics_port:
        start_http_server(metrics_port)
    if name == "feature-publisher":
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        _publisher(s, feast).run(stop, max_idle_s=max_idle_s)
        typer.echo(f"{name}: stopped")
        return
    handler = _make_handler(name, s, embeddings, model_version, max_seq_len, feast, publish, offline_history)
    proc = StreamProcessor(handler, ProcessorConfig(name=name, batch_max_records=batch_max_records,
                                                    exit_after_writes=exit_after_writes), s)
    proc.install_signal_handlers()
    proc.run(max_idle_s=max_idle_s)
    typer.echo(f"{name}: applied {proc.applied_total} events, {proc.dlq_total} to the DLQ")


def _start_serve(settings: Settings, config) -> str:
    from services.launch import start
    from services.serve_file import ServeFile

    return start(settings, ServeFile(config=config))


serve_app = typer.Typer(help="Run the Ray Serve application (two-tower -> HCN -> ranker) until interrupted; "
                             "`serve reload` applies a new config to it in place.", invoke_without_command=True,
                        rich_markup_mode=None)
app.add_typer(serve_app, name="serve")


@serve_app.callback()
def serve(ctx: typer.Context,
          config: Optional[str] = typer.Option(None, "--config", help="ServeConfig YAML, or a Ray Serve config file "
                                                                      "such as deploy/serve/recstream.yaml"),
          port: Optional[int] = typer.Option(None, help="HTTP port (default 8000)"),
          host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
          layout: Optional[str] = typer.Option(None, help="fused | split"),
          artifacts_dir: Optional[str] = typer.Option(None, help="model artefacts root")) -> None:
    """Run the Ray Serve application (two-tower -> HCN -> ranker) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from services.config import ServeConfig
    from services.launch import serve_until_stopped, start
    from services.serve_file import ServeFile, read_serve_file

    overrides = {k: v for k, v in dict(port=port, host=host, layout=layout, artifacts_dir=artifacts_dir).items() if v is not None}
    try:
        sf = read_serve_file(config, **overrides) if config else ServeFile(config=ServeConfig(**overrides))
    except (ValidationError, ValueError, OSError) as e:
        _fail(e)
    s = get_settings()
    url = start(s, sf)
    typer.echo(f"serving on {url}  (OpenAPI docs: {url}/docs; new versions: recstream serve reload --config FILE"
               f"{'' if sf.config.port == 8000 else f' --port {sf.config.port}'})")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_until_stopped(s, sf, overrides, s.home / "serve", stop, on_reload=lambda msg: typer.echo(f"reload: {msg}"))
    typer.echo("stopping")


@serve_app.command("reload")
def serve_reload(config: str = typer.Option(..., "--config", help="the Ray Serve config file to apply (e.g. "
                                                                  "deploy/serve/recstream.yaml with new versions)"),
                 port: int = typer.Option(8000, help="HTTP port of the running `recstream serve`"),
                 timeout_s: float = typer.Option(600, help="how long to wait for the server to apply it")) -> None:
    """Apply a new config to a running `recstream serve` in place: a version change reconfigures the
    live replicas (no restart, every request answered)."""
    from pydantic import ValidationError

    from recstream.errors import RecstreamError
    from services.launch import request_reload

    try:
        out = request_reload(config, port, get_settings().home / "serve", timeout_s)
    except (ValidationError, ValueError, OSError, RecstreamError) as e:
        _fail(e)
    typer.echo(f"reload: {out['message']}; variants now {json.dumps(out['variants'])}")


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")


DEMO_VERSION = "demo-ml100k"
DEMO_VERSION_B = "demo-ml100k-b"  # the A/B's second ranker: the same model without user-id embeddings


@app.command()
def demo(exit_after_samples: bool = typer.Option(False, "--exit-after-samples", help="exit after the sample requests (tests, CI)"),
         port: int = typer.Option(8000, help="HTTP port"),
         epochs: int = typer.Option(2, help="training epochs per model when the demo artefacts are not cached"),
         retrain: bool = typer.Option(False, help="train the demo artefacts again even when cached"),
         ab: bool = typer.Option(True, help="end with an offline A/B report of the two ranker versions on the traffic "
                                            "the demo served")) -> None:
    """Everything end to end: ML-100k -> Kafka -> processors -> Feast/BSE -> train -> Ray Serve -> impressions."""
    import subprocess

    import httpx

    from features.model_store import artifacts_root, list_versions
    from pipelines.bench.ml100k_serving import build_bse, stream_ml100k, train_stage_models
    from services.config import ServeConfig

    s = get_settings()
    t0 = time.monotonic()
    if not _external_servers():
        typer.echo("starting the local stack (Kafka KRaft + Redis)...")
    _ensure_stack(s)
    typer.echo(f"stack ready in {time.monotonic() - t0:.1f}s: kafka={s.kafka_bootstrap} redis={s.redis_url}")

    have = _topic_size(s)
    # Re-producing would count every rating twice; a topic that holds the dataset is used as it is.
    if have >= 100_000:
        typer.echo(f"{s.events_topic} already holds {have} events; not producing MovieLens-100k again")
    root = artifacts_root()
    stream_ml100k(s, root, split="all", produce=have < 100_000, progress=typer.echo)

    import shutil

    cached = all(DEMO_VERSION in list_versions(m, root) for m in ("two_tower", "hcn", "ranker"))
    if cached and not retrain:
        typer.echo(f"using the cached demo models {DEMO_VERSION} under {root}/models (--retrain to train again)")
    else:
        for m in ("two_tower", "hcn", "ranker"):
            shutil.rmtree(root / "models" / m / DEMO_VERSION, ignore_errors=True)
        typer.echo(f"training two-tower, HCN and ranker on what the stream wrote ({epochs} epochs at most each)...")
        train_stage_models(s, root, DEMO_VERSION, epochs, progress=typer.echo)
    if DEMO_VERSION_B not in list_versions("ranker", root) or retrain:
        shutil.rmtree(root / "models" / "ranker" / DEMO_VERSION_B, ignore_errors=True)
        typer.echo(f"training the A/B's second ranker {DEMO_VERSION_B} (no user-id embeddings)...")
        train_stage_models(s, root, DEMO_VERSION_B, epochs, progress=typer.echo, models=("ranker",),
                           ranker_overrides={"use_user_id": False})
    build_bse(s, root, DEMO_VERSION, progress=typer.echo)
    build_bse(s, root, DEMO_VERSION_B, progress=typer.echo)

    ref = lambda name: {"name": name, "version": DEMO_VERSION}  # noqa: E731
    models = {"retrieval": ref("two_tower"), "coarse": ref("hcn"), "ranker": ref("ranker")}
    # Deadlines for a small shared machine (the production defaults are tens of ms; see deploy/serve/).
    deadlines = {"inputs_timeout_ms": 300, "candidates_timeout_ms": 300, "coarse_timeout_ms": 300, "ranker_timeout_ms": 1000,
                 "redis_timeout_ms": 200}
    # Both variants explore (epsilon_slate: every item of the top k + pool can reach every slot),
    # so the A/B below can evaluate either ranker on all the traffic.
    explore = {"policy": "epsilon_slate", "epsilon": 0.3, "pool_size": 10}
    config = ServeConfig(port=port, artifacts_dir=str(root), deadlines=deadlines, variants={
        "A": {"share": 0.5, **models, "exploration": explore},
        "B": {"share": 0.5, **models, "ranker": {"name": "ranker", "version": DEMO_VERSION_B}, "exploration": explore}})
    url = _start_serve(s, config)
    typer.echo(f"Ray Serve is up: {url}  (OpenAPI docs: {url}/docs, metrics: {url}/metrics)")
    with httpx.Client(base_url=url, timeout=60) as client:
        for user in ("1", "42", "not-a-known-user"):
            resp = client.post("/v1/recommend", json={"user_id": user, "k": 5})
            typer.echo(f"POST /v1/recommend user_id={user!r} -> {resp.status_code} {resp.text}")
        resp = client.post("/v1/score", json={"user_id": "1", "item_ids": ["50", "181", "a-new-film"]})
        typer.echo(f"POST /v1/score user_id='1' -> {resp.status_code} {resp.text}")
    if ab:
        from pipelines.replay.demo import run_ab

        out = root / "replay" / "demo-ab"
        run_ab(s, url, root, {"A": DEMO_VERSION, "B": DEMO_VERSION_B}, out, progress=typer.echo)
        typer.echo((out / "report.md").read_text())
        typer.echo(f"A/B report: {out}/report.md (JSON: report.json; plots: estimates.png, weights.png, latency_cdf.png)")
    if exit_after_samples:
        import ray
        from ray import serve as ray_serve

        ray_serve.shutdown()
        ray.shutdown()
        typer.echo("demo done (Kafka and Redis keep running: `recstream stack down` stops them)")
        return
    # Keep the stream flowing into what the server reads while it serves.
    env = {**os.environ, **s.to_env(), "RECSTREAM_ARTIFACTS_DIR": str(root)}
    procs = [subprocess.Popen([sys.executable, "-m", "recstream.cli", "process", *args], env=env)
             for args in (["popularity"], ["feature-writer"],
                          ["bse-encoder", "--embeddings", f"artifact:ranker/{DEMO_VERSION}", "--model-version", DEMO_VERSION])]
    typer.echo("serving until Ctrl-C; popularity, feature-writer and bse-encoder keep consuming new events")
    try:
        _wait_forever()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _topic_size(s: Settings) -> int:
    """Records in the events topic (sum of partition end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, client_id="recstream-cli", enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(s.events_topic) or set()
        tps = [TopicPartition(s.events_topic, p) for p in parts]
        return sum(c.end_offsets(tps).values()) if tps else 0
    finally:
        c.close()


bench_app = typer.Typer(help="Benchmarks that write JSON and Markdown under reports/.", no_args_is_help=True,
                        rich_markup_mode=None, cls=_BenchGroup)
app.add_typer(bench_app, name="bench")


@bench_app.command("stream")
def bench_stream(out_dir: str = typer.Option("reports", help="where stream.json and stream.md go"),
                 events: int = typer.Option(100_000, help="events per throughput run")) -> None:
    """Processor throughput, freshness at 5,000 events/s, item-feature read paths, BSE bytes per user."""
    from pathlib import Path

    from pipelines.bench_stream import run

    s = get_settings()
    _ensure_stack(s)
    res = run(s, Path(out_dir), n_events=events)
    typer.echo((Path(out_dir) / "stream.md").read_text())
    typer.echo(json.dumps(res, indent=2))


@bench_app.command("serving")
def bench_serving(out_dir: str = typer.Option("reports", help="where serving.json and serving.md go"),
                  items: int = typer.Option(100_000, help="catalogue size"),
                  duration_s: float = typer.Option(8.0, help="seconds per throughput / latency measurement"),
                  concurrency: int = typer.Option(16, help="closed-loop clients"),
                  port: int = typer.Option(0, help="Serve HTTP port on loopback (0: one the OS reports free)"),
                  ml100k: bool = typer.Option(True, help="also: ML-100k Recall@20 served over HTTP vs offline"),
                  ml100k_epochs: int = typer.Option(10, help="ML-100k training epochs per model (early stopping)"),
                  throughput: bool = typer.Option(True, help="the throughput/latency part")) -> None:
    """Bare Ray Serve hops vs the real pipeline (fused, split), ANN recall, ranker cost; loopback only."""
    import tempfile
    from pathlib import Path

    import ray
    from ray import serve

    from deploy.local import free_ports
    from services.bench import markdown, run

    s = get_settings()
    _ensure_stack(s)
    port = port or free_ports(1)[0]
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="recstream-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    try:
        with tempfile.TemporaryDirectory(prefix="recstream-bench-serving-") as tmp:
            res = {}
            if throughput:
                res.update(run(s, Path(tmp), f"http://127.0.0.1:{port}", n_items=items, duration_s=duration_s,
                               concurrency=concurrency, progress=typer.echo))
            if ml100k:
                res.update(_ml100k_served_vs_offline(s, Path(tmp), f"http://127.0.0.1:{port}", ml100k_epochs))
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


def _ml100k_served_vs_offline(s: Settings, work, base_url: str, epochs: int = 10) -> dict:
    """ML-100k's training interactions through the stream, the three models trained on what it
    wrote, then every test user's top 20 from the live HTTP API and from the same request path
    offline (dataset histories, Feast offline join, in-memory BSE): Recall@20 of both."""
    import uuid

    from ray import serve

    from pipelines.bench.ml100k_serving import VERSION, offline_inputs, stream_and_train
    from recstream.kafka_io import ensure_topics
    from services.app import build_app
    from services.bench import served_vs_offline
    from services.config import ServeConfig

    tag = f"ml{uuid.uuid4().hex[:6]}"
    scratch = s.model_copy(update={"events_topic": f"{tag}.events", "dlq_topic": f"{tag}.events.dlq",
                                   "impressions_topic": f"{tag}.impressions", "redis_prefix": tag})
    ensure_topics(scratch)
    world = stream_and_train(scratch, work / "ml100k-artifacts", epochs=epochs, progress=typer.echo)
    ref = lambda name: {"name": name, "version": VERSION}  # noqa: E731
    config = ServeConfig(artifacts_dir=str(world.root),
                         variants={"A": {"share": 1.0, "retrieval": ref("two_tower"), "coarse": ref("hcn"), "ranker": ref("ranker")}},
                         deadlines={"inputs_timeout_ms": 2000, "candidates_timeout_ms": 3000, "coarse_timeout_ms": 3000,
                                    "ranker_timeout_ms": 5000, "redis_timeout_ms": 1000})
    serve.run(build_app(scratch, config), name="ml100k", route_prefix="/ml100k")
    try:
        res = served_vs_offline(f"{base_url}/ml100k", config, world.cases, offline_inputs(scratch, world))
    finally:
        serve.delete("ml100k")
    res["ml100k_two_tower_only_offline_recall_at_20"] = world.offline_recall_two_tower
    res["ml100k_epochs"] = epochs
    res.update({f"ml100k_{k}_s": round(v, 1) for k, v in world.seconds.items()})
    typer.echo(f"ML-100k Recall@20 served {res['served_recall_at_20_ml100k']:.4f} vs offline "
               f"{res['offline_recall_at_20_ml100k']:.4f} (identical top-20 for {res['ml100k_identical_top_k_share']:.1%})")
    return res


def main() -> None:
    app()


if __name__ == "__main__":
    main()
