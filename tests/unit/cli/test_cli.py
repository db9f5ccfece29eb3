"""The CLI's start-up (issue 9, defect 7): `recstream --help` loads no heavy library, and the lazily
listed sub-commands match the modules that own them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import typer
from typer.testing import CliRunner

from cli import main as cli

# (pydantic itself is not listed: typer imports it for some sub-command help pages.)
HEAVY = ("torch", "ray", "feast", "pandas", "numpy", "pyarrow", "sklearn", "pydantic_settings",
         "confluent_kafka", "kafka", "redis", "fastapi")


def _modules_loaded_by(args: list[str]) -> list[str]:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(__import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_loads_no_heavy_library():
    # torch alone took 6 s of the old 6-12 s: `_mount_optional` imported the training commands eagerly
    assert _modules_loaded_by(["--help"]) == []


def test_stack_and_bench_help_stay_light_too():
    assert _modules_loaded_by(["stack", "--help"]) == []
    assert _modules_loaded_by(["bench", "--help"]) == []


def test_help_lists_the_lazy_commands():
    out = CliRunner().invoke(cli.app, ["--help"])
    assert out.exit_code == 0
    for name in ("train", "evaluate", "bse", "stack", "demo", "process"):
        assert f"  {name} " in out.output, name
    assert "  models " in CliRunner().invoke(cli.app, ["bench", "--help"]).output


def test_the_lazy_table_matches_the_modules_that_own_the_commands():
    for group, table in cli._LAZY_COMMANDS.items():
        for name, (module, attr, help_text) in table.items():
            sub = typer.main.get_command(importlib.import_module(module).app)
            if attr is None:
                assert isinstance(sub, typer.core.TyperGroup), (group, name)
            else:
                cmd = sub.commands[attr] if hasattr(sub, "commands") else sub
                assert cmd.name == attr and cmd.get_short_help_str(10_000) == help_text, (group, name)
    # every command of the training module is mounted somewhere
    training = typer.main.get_command(importlib.import_module("pipelines.training.commands").app)
    mounted = {attr for table in cli._LAZY_COMMANDS.values() for m, attr, _ in table.values()
               if m == "pipelines.training.commands"}
    assert set(training.commands) == mounted


def test_a_lazy_command_runs_its_real_implementation():
    out = CliRunner().invoke(cli.app, ["train", "--help"])
    assert out.exit_code == 0 and "--model" in out.output
    out = CliRunner().invoke(cli.app, ["bse", "--help"])
    assert out.exit_code == 0 and "rebuild" in out.output


def test_invalid_settings_end_with_their_message_not_a_traceback(monkeypatch):
    from recstream import settings

    monkeypatch.setenv("RECSTREAM_STACK_KAFKA_PORT", "20000")
    monkeypatch.setenv("RECSTREAM_STACK_REDIS_PORT", "20000")
    settings.get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli.app, ["stack", "status"])
    finally:
        settings.get_settings.cache_clear()
    assert out.exit_code == 2 and "stack ports must differ" in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_a_bad_environment_variable_stops_the_real_command_at_start_up(tmp_path):
    """The installed entry point, as a user runs it: the message names the variable's value, no traceback."""
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")},
           "RECSTREAM_REDIS_URL": "http://not-redis:6379", "RECSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "cli", "topics"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "invalid RECSTREAM_* settings" in out.stderr and "redis_url ('http://not-redis:6379')" in out.stderr
    assert "Traceback" not in out.stderr
    env["RECSTREAM_REDIS_URL"], env["RECSTREAM_TOPIC_PARTITIONS"] = "redis://127.0.0.1:1/0", "many"
    out = subprocess.run([sys.executable, "-m", "cli", "stack", "status"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "topic_partitions" in out.stderr and "Traceback" not in out.stderr


def test_the_console_script_prints_help():
    from pathlib import Path

    script = Path(sys.executable).with_name("recstream")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Usage: recstream" in out.stdout
    for name in ("stack", "topics", "produce", "process", "serve", "demo", "train"):
        assert f"  {name} " in out.stdout, name


def test_serve_rejects_a_bad_layout_before_starting_anything():
    out = CliRunner().invoke(cli.app, ["serve", "--layout", "diagonal"])
    assert out.exit_code == 1 and "layout" in out.output and "diagonal" in out.output


def test_produce_synthetic_checks_its_options_before_connecting():
    # a short history used to fail deep in SyntheticConfig with a traceback (short_len 50 > seq_len)
    out = CliRunner().invoke(cli.app, ["produce", "synthetic", "--users", "0"])
    assert out.exit_code == 2 and "n_users (0)" in out.output, out.output


def test_every_command_reports_bad_settings_the_same_way():
    """`bse rebuild` used to end in a traceback where `topics` printed one line (issue 21): one
    settings loader raises SettingsError and the entry point prints every project error alike."""
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")},
           "RECSTREAM_REDIS_URL": "http://not-redis:6379", "RECSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    for args in (["topics"], ["bse", "rebuild", "--model-version", "v1", "--embeddings", "random:50:0"]):
        out = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert out.stderr.startswith("error: invalid RECSTREAM_* settings"), (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, (args, out.stderr[-2000:])
