"""`recstream stack up|down|status`: the local Kafka (KRaft) and Redis (a typer app the
`recstream` command mounts). A StackError ends the command with its message (the entry point
prints every project error as one line)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="Local Kafka (KRaft) + Redis stack.", no_args_is_help=True, rich_markup_mode=None,
                  add_completion=False)
stack_app = app


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream stack --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


def _stack(settings: Settings, brokers: int | None = None):
    """The local stack on the ports the settings name (RECSTREAM_STACK_*_PORT), with `brokers`
    Kafka nodes (default RECSTREAM_STACK_KAFKA_BROKERS)."""
    from deploy.local import LocalStack, StackConfig

    return LocalStack(StackConfig(home=settings.home, kafka_port=settings.stack_kafka_port,
                                  kafka_controller_port=settings.stack_kafka_controller_port,
                                  redis_port=settings.stack_redis_port,
                                  kafka_brokers=brokers or settings.stack_kafka_brokers))


def ensure_stack(s: Settings) -> None:
    """The local stack up (as many brokers as already run there, else the settings') and the
    topics created, unless the user named their own Kafka and Redis."""
    from recstream.kafka_io import ensure_topics

    if not external_servers():
        _stack(s, brokers=_stack(s).running_brokers()).up()
    ensure_topics(s)


def external_servers() -> bool:
    """True when the user pointed us at their own Kafka and Redis."""
    return bool(os.environ.get("RECSTREAM_KAFKA_BOOTSTRAP") and os.environ.get("RECSTREAM_REDIS_URL"))


@stack_app.command("up")
def stack_up(brokers: Optional[int] = typer.Option(
        None, "--brokers", min=1, max=5, help="Kafka nodes (KRaft, each broker+controller): 1, or 3 for a replicated "
        "cluster (topics with replication factor 3 and min.insync.replicas 2); default: as many as run already, "
        "else RECSTREAM_STACK_KAFKA_BROKERS")
) -> None:
    """Start Kafka and Redis (idempotent) and create the topics."""
    from recstream.errors import StackError
    from recstream.kafka_io import ensure_topics

    s = get_settings()
    stack = _stack(s, brokers or _stack(s).running_brokers())
    # Before anything starts: the topics could not be created on this cluster.
    rf = s.kafka_replication_factor
    if rf is not None and rf > stack.config.kafka_brokers:
        raise StackError(f"RECSTREAM_KAFKA_REPLICATION_FACTOR ({rf}) must be <= the stack's brokers "
                         f"({stack.config.kafka_brokers}): start it with --brokers {max(3, rf)} or unset the factor")
    st = stack.up()
    ensure_topics(s)
    from features.feast_repo import repo_for_settings  # Feast takes seconds to import: not before the checks

    repo = repo_for_settings(s)
    typer.echo(json.dumps({**st.__dict__, "feast_repo": str(repo.repo_dir)}, indent=2))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local Kafka (every node) and Redis (whatever ports they were started on)."""
    _stack(get_settings()).down()
    typer.echo("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka (every node) and Redis are running and ready on the configured ports (exit 3 if not)."""
    s = get_settings()
    st = _stack(s, brokers=_stack(s).running_brokers()).status()
    typer.echo(json.dumps({**st.__dict__, "ready": st.ready}, indent=2))
    raise typer.Exit(0 if st.ready else 3)
