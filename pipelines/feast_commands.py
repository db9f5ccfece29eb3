"""`recstream feast ...`: the Feast repository of a deployment (mounted by cli/main.py).

    recstream feast apply     # the chart's feast-apply hook Job runs this

Settings (redis_url, redis_prefix, home) come from recstream.settings.get_settings(): the
repository is applied in `<home>/feast/<redis_prefix>` with the Redis online store at redis_url,
one Feast project per prefix (features/feast_repo.py repo_for_settings).
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Feast repository: apply the definitions for this deployment's Redis.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


@app.callback()
def _group() -> None:
    """Feast repository: apply the definitions for this deployment's Redis."""  # a group, so `apply` stays a sub-command


@app.command()
def apply() -> None:
    """Apply the feature repository (idempotent): views, push sources, offline parquet files."""
    from pydantic import ValidationError

    from features.errors import FeatureRepoError
    from features.feast_repo import repo_for_settings
    from recstream.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as e:
        typer.secho(f"error: invalid RECSTREAM_* settings: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        repo = repo_for_settings(settings)
    except FeatureRepoError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"feast repository applied: {repo.repo_dir} (project {repo.project}, online store {repo.online})")
