"""`recstream drill kafka|ray`: failure drills that write reports/drill_<name>.{json,md} (a typer app
the `recstream` command mounts; heavy imports inside the commands). One module per drill:
benchmarks/drill_kafka.py, benchmarks/drill_ray.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(help="Failure drills on a local stack of their own; reports under reports/.", no_args_is_help=True,
                  rich_markup_mode=None, add_completion=False)


@app.callback()
def _drill() -> None:
    """Failure drills on a local stack of their own; reports under reports/."""


@app.command("kafka")
def drill_kafka(out_dir: str = typer.Option("reports", help="where drill_kafka.json and drill_kafka.md go"),
                brokers: int = typer.Option(3, min=3, max=5, help="Kafka nodes of the drill's stack"),
                events: int = typer.Option(60_000, min=1, help="events streamed"),
                events_per_s: int = typer.Option(2_000, min=1, help="event rate"),
                impressions_per_s: int = typer.Option(200, min=1, help="impression-log rate, for as long as events stream"),
                kill_at_fraction: float = typer.Option(0.3, help="kill a broker after this fraction of the events"),
                down_s: float = typer.Option(10.0, min=0, help="how long the killed broker stays down"),
                keep_stack: bool = typer.Option(False, help="leave the drill's stack running (its status is printed)")) -> None:
    """SIGKILL one broker of a replicated Kafka mid-stream and restart it, with the processors and
    the impression logger running; count lost, double-applied and failed events and impressions.

    The drill starts its own stack (Kafka nodes and redis-server on ports the OS reports free,
    data under RECSTREAM_HOME/drills, removed afterwards unless the drill failed), so a stack you
    run is never touched. Exits 1 when an event or impression was lost or anything failed."""
    from benchmarks.drill_kafka import KafkaDrillConfig, run_drill, write_report
    from recstream.settings import get_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = KafkaDrillConfig(events=events, events_per_s=events_per_s, impressions_per_s=impressions_per_s,
                           kill_at_fraction=kill_at_fraction, down_s=down_s)
    home = get_settings().home
    stack = _drill_stack(home, "kafka", kafka_brokers=brokers)
    res: dict | None = None
    try:
        stack.up()
        res = run_drill(stack, home, cfg)
    finally:
        failed = res is None or bool(res["kafka_drill_lost_events"] or res["kafka_drill_errors"]
                                     or res["kafka_drill_impressions_lost"])
        if keep_stack:
            typer.echo(json.dumps(stack.status().__dict__, indent=2))
        else:
            _tear_down(stack, failed)
    write_report(res, cfg, Path(out_dir))
    _publish(res, Path(out_dir) / "drill_kafka.md", failed)


@app.command("ray")
def drill_ray(out_dir: str = typer.Option("reports", help="where drill_ray.json and drill_ray.md go"),
              clients: int = typer.Option(4, min=1, help="closed-loop /v1/recommend clients"),
              before_s: float = typer.Option(20.0, min=1, help="answers before the worker node's raylet is killed"),
              down_s: float = typer.Option(30.0, min=1, help="how long the worker node stays down"),
              recovery_timeout_s: float = typer.Option(180.0, min=1, help="longest wait for undegraded answers after "
                                                       "the restart"),
              after_s: float = typer.Option(20.0, min=1, help="answers measured after recovery"),
              items: int = typer.Option(5_000, min=100, help="catalogue size of the drill's random models")) -> None:
    """SIGKILL the raylet of the Ray worker node that holds the ranker (split layout, ranker pinned
    by the custom resource ranker_node) under steady /v1/recommend load, restart the node with `ray
    start`; count errors and degraded answers before, while down and after recovery.

    The drill starts its own Ray head and worker (`ray start`, ports the OS reports free, temp dirs
    of their own, stopped by pid afterwards: another Ray on the machine is never touched) and its own
    Redis and Kafka (data under RECSTREAM_HOME/drills, removed afterwards unless the drill failed).
    Exits 1 when a request failed or answers did not recover."""
    import tempfile

    from benchmarks.drill_ray import RayDrillConfig, run_drill, write_report
    from recstream.kafka_io import ensure_topics
    from recstream.settings import Settings, get_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = RayDrillConfig(clients=clients, before_s=before_s, down_s=down_s, recovery_timeout_s=recovery_timeout_s,
                         after_s=after_s, n_items=items)
    home = get_settings().home
    stack = _drill_stack(home, "ray")
    s = Settings(kafka_bootstrap=stack.config.kafka_bootstrap, redis_url=stack.config.redis_url, home=home,
                 impressions_topic="drill.impressions", redis_prefix="rdrill")
    res: dict | None = None
    try:
        stack.up()
        ensure_topics(s)
        with tempfile.TemporaryDirectory(prefix="recstream-drill-ray-") as tmp:
            res = run_drill(s, Path(tmp), cfg, progress=typer.echo)
    finally:
        failed = res is None or bool(res["ray_drill_errors"]) or not res["ray_drill_recovered"]
        _tear_down(stack, failed)
    write_report(res, cfg, Path(out_dir))
    _publish(res, Path(out_dir) / "drill_ray.md", failed)


def _drill_stack(home: Path, name: str, **config):
    """A LocalStack of the drill's own: ports the OS reports free, data under <home>/drills/<name>-<time>."""
    import time

    from deploy.local import LocalStack, StackConfig, free_ports

    k, c, r = free_ports(3)
    return LocalStack(StackConfig(home=home, state_dir=home / "drills" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}",
                                  kafka_port=k, kafka_controller_port=c, redis_port=r, **config))


def _tear_down(stack, failed: bool) -> None:
    """Stop the drill's stack; keep its data (the servers' and processors' logs) only for a post-mortem."""
    import shutil

    stack.down()
    if failed:
        typer.echo(f"drill failed: the stack's logs kept in {stack.dir}", err=True)
    else:
        shutil.rmtree(stack.dir, ignore_errors=True)


def _publish(res: dict, markdown: Path, failed: bool) -> None:
    """Print the written report and the result; exit 1 for a failed drill."""
    typer.echo(markdown.read_text())
    typer.echo(json.dumps(res, indent=2))
    if failed:
        raise typer.Exit(1)
