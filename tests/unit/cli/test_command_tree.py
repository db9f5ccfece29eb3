"""Every `recstream` sub-command keeps its name and options (issue 21): the full tree of
commands, arguments and options, lazy commands included, is compared with the snapshot
`command_tree.json` taken from the code before the CLI moved out of the kernel.

Regenerate the snapshot only for a deliberate interface change:
`.venv/bin/python tests/unit/cli/test_command_tree.py > tests/unit/cli/command_tree.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

SNAPSHOT = Path(__file__).with_name("command_tree.json")


def _root():
    from cli import app

    return typer.main.get_command(app)


def _param(p) -> dict:
    return {"name": p.name, "kind": p.param_type_name, "opts": sorted(p.opts), "secondary_opts": sorted(p.secondary_opts),
            "type": repr(p.type_descriptor.annotation), "required": p.required, "nargs": p.nargs, "multiple": p.multiple,
            "default": repr(p.default), "is_flag": getattr(p, "is_flag", False), "hidden": getattr(p, "hidden", False)}


def command_tree(cmd, ctx=None) -> dict:
    """{params, hidden, commands?} for a command and, recursively, its sub-commands."""
    ctx = typer.Context(cmd, info_name=cmd.name, parent=ctx)
    node: dict = {"params": [_param(p) for p in cmd.params], "hidden": cmd.hidden}
    if hasattr(cmd, "list_commands"):
        node["commands"] = {}
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, f"{ctx.command_path} {name}: listed but cannot be loaded"
            node["commands"][name] = command_tree(sub, ctx)
    return node


def test_every_command_and_option_keeps_its_name():
    assert command_tree(_root()) == json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    print(json.dumps(command_tree(_root()), indent=1, sort_keys=True))
