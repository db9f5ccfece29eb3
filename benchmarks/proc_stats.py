"""The processes a benchmark runs beside it: their CPU time from Linux /proc (where the time goes,
split by process role, in the serving and scale benchmarks), and stopping them (the scale
benchmark and the Kafka drill)."""

from __future__ import annotations

import os
import signal
import subprocess
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


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 60.0) -> list[int]:
    """SIGTERM every process still running (a processor flushes and commits on it), then wait for
    each, SIGKILLing one that has not exited after `timeout_s`; returns their exit statuses."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    rcs = []
    for p in procs:
        try:
            rcs.append(p.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            p.kill()
            rcs.append(p.wait())
    return rcs
