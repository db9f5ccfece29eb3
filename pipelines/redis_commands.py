"""`recstream redis ...`: a deployment's Redis state (mounted by cli/main.py; heavy imports
inside the commands).

    recstream redis migrate --source redis://old:6379/0 [--dry-run] [--overwrite]

The target is the deployment of the current settings (RECSTREAM_REDIS_URL, normally
redis+cluster://..., RECSTREAM_REDIS_PREFIX, RECSTREAM_TOPIC_PARTITIONS = the events topic's
partition count); pipelines/redis_migrate.py holds the key mapping and the copy.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="Redis state: move a single Redis's state to a Redis Cluster (partitioned key layout).",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)

_PROCESSORS = "popularity,bse-encoder,feature-writer"


@app.callback()
def _group() -> None:
    """Redis state: move a single Redis's state to a Redis Cluster (partitioned key layout)."""


@app.command()
def migrate(
    source: str = typer.Option(..., help="the single Redis to copy from (redis://, rediss:// or unix://)"),
    source_prefix: Optional[str] = typer.Option(None, help="the source deployment's key prefix (default: "
                                                "RECSTREAM_REDIS_PREFIX, the target's)"),
    processors: str = typer.Option(_PROCESSORS, help="whose state to copy, comma-separated (feature-writer "
                                   "includes its outbox, item blobs and Feast rows)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (keys per family, offsets per "
                                 "partition) and the checks' verdict; write nothing"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete the target's state of these processors "
                                   "first instead of refusing (also: re-run a migration that failed half-way)"),
    check_groups: bool = typer.Option(True, "--check-groups/--no-check-groups", help="ask Kafka: refuse while a "
                                      "consumer group recstream.<processor> has members, or when the events topic's "
                                      "partition count is not RECSTREAM_TOPIC_PARTITIONS"),
    batch_keys: int = typer.Option(500, min=1, max=100_000, help="keys per DUMP/RESTORE pipeline"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="a progress bar on stderr"),
) -> None:
    """Copy the processors' state and stored offsets from a single Redis (single key layout) into
    this deployment's Redis Cluster (partitioned layout). Stop every processor (and a separate
    feature-publisher) first; start them on the cluster afterwards: they resume from the migrated
    offsets. Nothing is written if a key has no known place, the source is already partitioned,
    or the target already holds state (without --overwrite)."""
    from tqdm import tqdm

    from pipelines.redis_migrate import check_plan, migrate as run
    from recstream.settings import get_settings

    settings = get_settings()
    bars = []

    def bar(plan):
        bars.append(tqdm(total=plan.n_scanned, unit="key", desc="migrate", disable=not progress))
        return bars[0].update

    try:
        m = run(settings, source, source_prefix, [p.strip() for p in processors.split(",") if p.strip()],
                dry_run=dry_run, overwrite=overwrite, check_groups=check_groups, batch_keys=batch_keys, progress=bar)
    finally:
        for b in bars:
            b.close()
    plan = m.plan
    typer.echo(f"{'plan' if dry_run else 'migration'}: {m.source} -> {m.target}")
    for line in plan.lines():
        typer.echo(line)
    if plan.target_existing:
        typer.echo("  already in the target: " + ", ".join(f"{n}: {c}" for n, c in sorted(plan.target_existing.items())))
    if dry_run:
        check_plan(plan, m.source, m.target, overwrite)  # the verdict a real run would give
        typer.echo(f"dry run: {plan.n_keys:,} keys would be copied; nothing written")
        return
    res = m.result
    typer.echo(f"copied {sum(res.copied.values()):,} keys"
               + (f" after deleting {res.deleted:,} target keys" if res.deleted else "")
               + (f"; {res.vanished} expired before their copy" if res.vanished else ""))
    for name, n in sorted(res.copied.items()):
        typer.echo(f"  {name:<34} {n:>10,}")
