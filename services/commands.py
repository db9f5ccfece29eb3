"""`recstream serve`: run the Ray Serve application until interrupted (a typer command the
`recstream` command mounts; `start_serve` is also the demo's)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="The Ray Serve application.", no_args_is_help=True, rich_markup_mode=None, add_completion=False)


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


def start_serve(settings: Settings, config) -> str:
    import ray
    from ray import serve

    from services.app import build_app

    if not ray.is_initialized():
        # Logical CPUs: replicas reserve fractions (ServeConfig.num_cpus), so several deployments fit on 2 cores.
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="recstream")
    serve.start(http_options={"host": config.host, "port": config.port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app(settings, config), name="recstream", route_prefix="/", blocking=False)
    return f"http://{config.host}:{config.port}"


@app.command()
def serve(config: Optional[str] = typer.Option(None, "--config", help="ServeConfig YAML, or a Ray Serve config file "
                                                                      "such as deploy/serve/recstream.yaml"),
          port: Optional[int] = typer.Option(None, help="HTTP port (default 8000)"),
          host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
          layout: Optional[str] = typer.Option(None, help="fused | split"),
          artifacts_dir: Optional[str] = typer.Option(None, help="model artefacts root")) -> None:
    """Run the Ray Serve application (two-tower -> HCN -> ranker) until interrupted."""
    from pydantic import ValidationError

    from services.config import ServeConfig

    overrides = {k: v for k, v in dict(port=port, host=host, layout=layout, artifacts_dir=artifacts_dir).items() if v is not None}
    try:
        cfg = ServeConfig.from_file(config, **overrides) if config else ServeConfig(**overrides)
    except (ValidationError, ValueError, OSError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    url = start_serve(get_settings(), cfg)
    typer.echo(f"serving on {url}  (OpenAPI docs: {url}/docs)")
    wait_forever()


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")
