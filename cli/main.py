"""The `recstream` command: the root group and the lazy command table, nothing else.

Each command's body lives with its owner (the stack with deploy/local, processors with
pipelines/stream, `serve` with services, the demo in demo/, benchmarks in benchmarks/) and is
imported only when it is invoked or asked for its help, so `recstream --help` imports typer and
this module only (about 0.3 s). Every project error (`RecstreamError`, invalid RECSTREAM_*
settings included) ends the command the same way: `error: <message>` on stderr, no traceback,
exit status `error.exit_code`.
"""

from __future__ import annotations

import os

# Small matmuls on the serving and streaming paths (SimHash of candidates, feature math) stall
# on OpenBLAS worker threads when the cores are shared; one thread is faster there. Must be set
# before numpy loads. Training uses torch's own thread pool and is unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging

import click
import typer
from typer.core import TyperGroup

from recstream.errors import RecstreamError
from recstream.logs import setup_logging

# The commands, imported only when used, listed in the order `recstream --help` always showed them:
#   group -> {command: (module, command name in that module's Typer app, or None for the whole app, short help)}
# A group listed here as a key also gets these commands added when its whole app is loaded
# (`replay bench` is the replay benchmark's command, which lives in benchmarks/).
# tests/unit/cli/test_cli.py checks the table against the modules.
_LAZY_COMMANDS: dict[str, dict[str, tuple[str, str | None, str]]] = {
    "recstream": {
        "topics": ("pipelines.produce_commands", "topics", "Create the platform's Kafka topics when missing."),
        "produce": ("pipelines.produce_commands", "produce", "Produce a dataset's events to the events topic."),
        "process": ("pipelines.stream.commands", "process", "Run a stream processor (consumer group, manual commits, "
                    "DLQ, exactly-once effect on Redis)."),
        "demo": ("demo.command", "demo", "Everything end to end: ML-100k -> Kafka -> processors -> Feast/BSE -> "
                 "train -> Ray Serve -> impressions."),
        "stack": ("deploy.local.commands", None, "Local Kafka (KRaft) + Redis stack."),
        "serve": ("services.commands", "serve", "Run the Ray Serve application (two-tower -> HCN -> ranker) until "
                  "interrupted; `serve reload` applies a new config to it in place."),
        "bench": ("benchmarks.commands", None, "Benchmarks that write JSON and Markdown under reports/."),
        "train": ("pipelines.training.commands", "train",
                  "Train one model and save it under artifacts/models/<name>/<version>/."),
        "evaluate": ("pipelines.training.commands", "evaluate",
                     "Evaluate a saved model on the split of the data it was trained on (rebuilt from its manifest)."),
        "bse": ("pipelines.bse_commands", None, "BSE tables: rebuild for a new model version, inspect a user."),
        "replay": ("pipelines.replay.cli", None, "Offline A/B from the impression log: off-policy estimates with "
                   "intervals, traffic replay to two variants, a report with plots."),
        "feast": ("pipelines.feast_commands", None, "Feast repository: apply the definitions for this deployment's Redis."),
        "redis": ("pipelines.redis_commands", None, "Redis state: move a single Redis's state to a Redis Cluster "
                  "(partitioned key layout)."),
        "drill": ("benchmarks.drill_commands", None, "Failure drills on a local stack of their own; reports under reports/."),
    },
    "replay": {
        "bench": ("benchmarks.commands", "replay",
                  "Off-policy estimators' error and 95% interval coverage on 100k simulated impressions; replay speed; "
                  "how much of the real request path's served order replay gives back."),
    },
}

log = logging.getLogger("recstream.cli")


def _load(module: str, attr: str | None, name: str, help_text: str):
    """The click command for a table entry (None when its optional package is absent)."""
    import importlib

    try:
        sub = typer.main.get_command(importlib.import_module(module).app)
    except ImportError as e:
        log.debug("optional command %s unavailable: %s", name, e)
        return None
    # (an app of one command and no callback is that command itself, not a group)
    cmd = sub if attr is None or not hasattr(sub, "commands") else sub.commands[attr]
    cmd.name = name
    if attr is None:
        cmd.help = cmd.help or help_text
        for extra, entry in _LAZY_COMMANDS.get(name, {}).items():
            if extra not in cmd.commands:  # type: ignore[attr-defined]
                extra_cmd = _load(*entry[:2], extra, entry[2])
                if extra_cmd is not None:
                    cmd.add_command(extra_cmd, extra)  # type: ignore[attr-defined]
    return cmd


class _RootGroup(TyperGroup):
    """The root group: lists the commands of `_LAZY_COMMANDS` and imports one on use. An absent
    optional package simply leaves its commands out."""

    def _lazy(self) -> dict[str, tuple[str, str | None, str]]:
        return _LAZY_COMMANDS["recstream"]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in self._lazy() if n not in self.commands)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self._lazy():
            return super().get_command(ctx, name)
        cmd = _load(*self._lazy()[name][:2], name, self._lazy()[name][2])
        if cmd is not None:
            self.commands[name] = cmd
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a lazy command's line comes from the table, without importing it."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = []
        for name in names:
            if name in self._lazy() and name not in self.commands:
                # click's own shortening (make_default_short_help is deprecated as a public function)
                rows.append((name, click.Command(name, help=self._lazy()[name][2]).get_short_help_str(limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        """Every project error ends the command as one line, whichever command raised it."""
        try:
            return super().invoke(ctx)
        except RecstreamError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(help="recstream: streaming, online-serving recommender platform.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, cls=_RootGroup)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
          json_logs: bool = typer.Option(False, "--json-logs", help="structured JSON log lines")) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO, json_lines=json_logs)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
