"""`recstream demo`: everything end to end on MovieLens-100k (the world it builds is
demo/ml100k_world.py, which the serving benchmark shares)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="The end-to-end demo.", no_args_is_help=True, rich_markup_mode=None, add_completion=False)


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


DEMO_VERSION = "demo-ml100k"
# The demo's cascade: the library defaults with shorter epoch caps, so a first run trains in a few
# minutes on 2 cores (`--cascade-set FIELD=VALUE` overrides; `recstream bench cascade` measures the defaults).
DEMO_CASCADE = ("two_tower_epochs=6", "oof_epochs=4", "hcn_epochs=2", "ranker_epochs=2")


@app.command()
def demo(exit_after_samples: bool = typer.Option(False, "--exit-after-samples", help="exit after the sample requests (tests, CI)"),
         port: int = typer.Option(8000, help="HTTP port"),
         cascade_set: list[str] = typer.Option(list(DEMO_CASCADE), "--cascade-set",
                                               help="CascadeConfig overrides FIELD=VALUE for the demo's cascade (repeat)"),
         retrain: bool = typer.Option(False, help="train the demo artefacts again even when cached"),
         ab: bool = typer.Option(True, help="end with an offline A/B report of the two variants (the full cascade "
                                            "and the cascade without the ranker) on the traffic the demo served")) -> None:
    """Everything end to end: ML-100k -> Kafka -> processors -> Feast/BSE -> train -> Ray Serve -> impressions."""
    import subprocess

    import httpx

    from features.model_store import artifacts_root, list_versions
    from demo.ml100k_world import build_bse, stream_ml100k, train_cascade_models
    from deploy.local.commands import ensure_stack, external_servers
    from services.commands import start_serve, wait_forever
    from services.config import ServeConfig

    s = get_settings()
    t0 = time.monotonic()
    if not external_servers():
        typer.echo("starting the local stack (Kafka KRaft + Redis)...")
    ensure_stack(s)
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
        typer.echo(f"training the cascade (two-tower, HCN, listwise ranker, fusion) on what the stream wrote "
                   f"({' '.join(cascade_set)})...")
        train_cascade_models(s, root, DEMO_VERSION, tuple(cascade_set), progress=typer.echo)
    build_bse(s, root, DEMO_VERSION, progress=typer.echo)

    ref = lambda name: {"name": name, "version": DEMO_VERSION}  # noqa: E731
    models = {"retrieval": ref("two_tower"), "coarse": ref("hcn"), "ranker": ref("ranker")}
    # Deadlines for a small shared machine (the production defaults are tens of ms; see deploy/serve/).
    deadlines = {"inputs_timeout_ms": 300, "candidates_timeout_ms": 300, "coarse_timeout_ms": 300, "ranker_timeout_ms": 1000,
                 "redis_timeout_ms": 200}
    # Both variants explore (epsilon_slate: every item of the top k + pool can reach every slot),
    # so the A/B below can evaluate either ranker on all the traffic.
    explore = {"policy": "epsilon_slate", "epsilon": 0.3, "pool_size": 10}
    # A: the full cascade (fused order); B: the same versions without the ranker (two-tower -> HCN),
    # the A/B that says whether the ranker earns its stage.
    config = ServeConfig(port=port, artifacts_dir=str(root), deadlines=deadlines, variants={
        "A": {"share": 0.5, **models, "exploration": explore},
        "B": {"share": 0.5, **models, "cascade": "coarse", "exploration": explore}})
    url = start_serve(s, config)
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
        run_ab(s, url, root, dict(config.variants), out, progress=typer.echo)
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
    procs = [subprocess.Popen([sys.executable, "-m", "cli", "process", *args], env=env)
             for args in (["popularity"], ["feature-writer"],
                          ["bse-encoder", "--embeddings", f"artifact:ranker/{DEMO_VERSION}", "--model-version", DEMO_VERSION])]
    typer.echo("serving until Ctrl-C; popularity, feature-writer and bse-encoder keep consuming new events")
    try:
        wait_forever()
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
