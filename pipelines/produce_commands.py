"""`recstream topics` and `recstream produce`: create the platform's topics, produce a dataset's
events (typer commands the `recstream` command mounts; heavy imports inside the commands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="Kafka topics and dataset producers.", no_args_is_help=True, rich_markup_mode=None,
                  add_completion=False)


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


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
