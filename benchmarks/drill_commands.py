"""`recstream drill kafka`: failure drills that write reports/drill_<name>.{json,md} (a typer app
the `recstream` command mounts; heavy imports inside the commands). One module per drill:
benchmarks/drill_kafka.py."""

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
    import shutil
    import time

    from benchmarks.drill_kafka import KafkaDrillConfig, run_drill, write_report
    from deploy.local import LocalStack, StackConfig, free_ports
    from recstream.settings import get_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = KafkaDrillConfig(events=events, events_per_s=events_per_s, impressions_per_s=impressions_per_s,
                           kill_at_fraction=kill_at_fraction, down_s=down_s)
    home = get_settings().home
    k, c, r = free_ports(3)
    stack = LocalStack(StackConfig(home=home, state_dir=home / "drills" / f"kafka-{time.strftime('%Y%m%dT%H%M%S')}",
                                   kafka_port=k, kafka_controller_port=c, redis_port=r, kafka_brokers=brokers))
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
            stack.down()
            if failed:  # the brokers', processors' and redis' logs, for the post-mortem
                typer.echo(f"drill failed: logs kept in {stack.dir}", err=True)
            else:
                shutil.rmtree(stack.dir, ignore_errors=True)
    write_report(res, cfg, Path(out_dir))
    typer.echo((Path(out_dir) / "drill_kafka.md").read_text())
    typer.echo(json.dumps(res, indent=2))
    if failed:
        raise typer.Exit(1)
