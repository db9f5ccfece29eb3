"""`recstream serve`: run the Ray Serve application until interrupted, and `recstream serve reload`
to apply a new config to it in place (typer commands the `recstream` command mounts;
`start_serve` is also the demo's)."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from recstream.settings import Settings

app = typer.Typer(help="The Ray Serve application.", no_args_is_help=True, rich_markup_mode=None, add_completion=False)
serve_app = typer.Typer(help="Run the Ray Serve application (two-tower -> HCN -> ranker) until interrupted; "
                             "`serve reload` applies a new config to it in place.", invoke_without_command=True,
                        rich_markup_mode=None, add_completion=False)
app.add_typer(serve_app, name="serve")


def get_settings() -> "Settings":
    """recstream.settings.get_settings, imported on use so that `recstream --help` stays light."""
    from recstream.settings import get_settings as _get

    return _get()


def start_serve(settings: Settings, config) -> str:
    """A local Ray and Serve with `config` applied as `serve deploy` applies a file; the base URL."""
    from services.launch import start
    from services.serve_file import ServeFile

    return start(settings, ServeFile(config=config))


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
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
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

    from services.launch import request_reload

    try:
        out = request_reload(config, port, get_settings().home / "serve", timeout_s)
    except (ValidationError, ValueError, OSError) as e:  # a RecstreamError is printed by the root group
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"reload: {out['message']}; variants now {json.dumps(out['variants'])}")


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")
