"""`recstream process NAME`: run a stream processor (a typer command the `recstream` command
mounts; heavy imports inside the command)."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="Stream processors.", no_args_is_help=True, rich_markup_mode=None, add_completion=False)


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


PROCESSORS = ("popularity", "bse-encoder", "feature-writer", "feature-publisher")


def _publisher(s: Settings, feast: bool, offline_history: bool = False):
    from features.feast_repo import repo_for_settings
    from features.item_features import RedisItemFeatures
    from pipelines.stream.feature_publisher import FeaturePublisher

    from features.keys import KeyLayout
    from recstream.redis_io import redis_client

    return FeaturePublisher(redis_client(s.redis_url, decode_responses=True), KeyLayout.from_settings(s),
                            repo=repo_for_settings(s) if feast else None,
                            item_blobs=RedisItemFeatures.from_url(s.redis_url, prefix=s.redis_prefix),
                            offline_history=offline_history)


def _make_handler(name: str, s: Settings, embeddings: str, model_version: str, max_seq_len: int, feast: bool = True,
                  publish: str = "inline", offline_history: bool = False):
    from features.keys import KeyLayout
    from recstream.redis_io import redis_client

    layout = KeyLayout.from_settings(s)
    if name == "popularity":
        from pipelines.stream import PopularityHandler

        return PopularityHandler(redis_client(s.redis_url), layout, s.recent_items_max)
    if name == "bse-encoder":
        from features.bse import RedisBseStore
        from pipelines.stream.bse_encoder import BseEncoderHandler, load_table_version

        version = load_table_version(embeddings, model_version)
        store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, versions=[version], max_seq_len=max_seq_len,
                                       layout=layout)
        return BseEncoderHandler(store)
    if name == "feature-writer":
        from pipelines.stream.feature_writer import FeatureWriterHandler

        if publish not in ("inline", "separate"):
            raise typer.BadParameter(f"--publish must be inline or separate, got {publish!r}", param_hint="--publish")
        if offline_history and publish != "inline":
            raise typer.BadParameter("--offline-history needs --publish inline (the writer records each segment's "
                                     "state in its own publisher)", param_hint="--offline-history")
        return FeatureWriterHandler(redis_client(s.redis_url, decode_responses=True), layout,
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
