"""The CLI face: the `recstream` command (cli/main.py: the root group and the lazy command table).
It imports the command modules by name only, when one is used."""

from cli.main import app

__all__ = ["app"]
