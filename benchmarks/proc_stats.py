"""CPU time of the processes a benchmark runs beside it, from Linux /proc: where the time goes,
split by process role (the serving and scale benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pids: list[int]) -> float:
    """utime + stime of the processes, seconds (a process that exited counts 0)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def pids_by_role(roles: dict[str, tuple[str, ...]]) -> dict[str, list[int]]:
    """role -> pids of the running processes whose command line holds one of the role's
    substrings (the first role that matches takes a process)."""
    out: dict[str, list[int]] = {role: [] for role in roles}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for role, tags in roles.items():
            if any(t in cmd for t in tags):
                out[role].append(int(d.name))
                break
    return out
