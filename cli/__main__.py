"""`python -m cli ...`: the `recstream` command (what child processes run)."""

from cli.main import main

main()
