"""A real Redis Cluster on loopback: three masters with one replica each (the integration tests' session
fixture and `recstream bench stream --cluster`).

Six `redis-server` processes in cluster mode on ports (client and bus) the OS reports free, with
their data in one folder, joined with `redis-cli --cluster create ... --cluster-replicas 1`. A
low `cluster-node-timeout` lets a replica promote itself soon after its master is SIGKILLed (a
`CLUSTER FAILOVER` needs the master alive). `appendonly yes` with `appendfsync always` keeps a
restarted node's data; replication to the replica stays asynchronous, which is what a failover
test must face.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

N_MASTERS = 3


@dataclass
class _Node:
    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen | None = None


@dataclass
class LocalRedisCluster:
    """Start with up(), stop with down(). `url` is what Settings.redis_url takes.

    Args:
        state_dir: where each node keeps its config, append-only file and log.
        node_timeout_ms: cluster-node-timeout: how long a master may be silent before its
            replica takes over (the failover test waits about twice this).
    """

    state_dir: Path
    node_timeout_ms: int = 1500
    nodes: list[_Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:N_MASTERS])

    def up(self, timeout_s: float = 60.0) -> None:
        from deploy.local import free_ports

        ports = free_ports(4 * N_MASTERS)
        for i in range(2 * N_MASTERS):
            d = self.state_dir / f"node{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(_Node(ports[2 * i], ports[2 * i + 1], d))
        for n in self.nodes:
            self._start(n)
        for n in self.nodes:
            self._wait(lambda n=n: self._cli(n.port, "ping").strip() == "PONG", f"redis node :{n.port}", timeout_s)
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1", "--cluster-yes"],
                             capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        self.wait_healthy(timeout_s)

    def _start(self, n: _Node) -> None:
        conf = [
            "--port", str(n.port), "--cluster-port", str(n.bus_port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", str(n.dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(n.dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(n.dir / "redis.log"), "--daemonize", "no", "--protected-mode", "no",
        ]
        n.proc = subprocess.Popen(["redis-server", *conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    @staticmethod
    def _cli(port: int, *args: str) -> str:
        try:
            return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                                  timeout=5).stdout
        except subprocess.TimeoutExpired:
            return ""

    @staticmethod
    def _wait(cond, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis cluster: not reached in {timeout_s} s: {what}")

    def live(self) -> list[_Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Every live node reports cluster_state:ok and three masters serve all 16384 slots."""

        def ok() -> bool:
            for n in self.live():
                info = self._cli(n.port, "cluster", "info")
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
            return len(self.masters()) == N_MASTERS

        self._wait(ok, "cluster_state:ok on every node", timeout_s)

    def masters(self) -> list[int]:
        """Ports of the live masters that serve slots."""
        live = self.live()
        if not live:
            return []
        out = []
        for line in self._cli(live[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
                out.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return out

    def master_of_slot(self, slot: int) -> int:
        """Port of the master serving `slot`."""
        live = self.live()
        for line in self._cli(live[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) <= 8 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def master_holding_most(self, keys: list[str]) -> tuple[int, list[int]]:
        """(port of the master whose slots hold the most of `keys`, the positions of those keys):
        the failover drills kill the master that holds the most partitions' state."""
        from collections import defaultdict

        from redis.crc import key_slot

        by_master: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            by_master[self.master_of_slot(key_slot(k.encode()))].append(i)
        return max(by_master.items(), key=lambda kv: len(kv[1]))

    def _node(self, port: int) -> _Node:
        return next(n for n in self.nodes if n.port == port)

    def replica_of(self, master_port: int) -> int:
        """Port of the live replica that follows the master on `master_port`."""
        lines = [ln.split() for ln in self._cli(master_port, "cluster", "nodes").splitlines() if ln.strip()]
        master_id = next(ln[0] for ln in lines if "myself" in ln[2])
        for ln in lines:
            if "slave" in ln[2] and ln[3] == master_id and "fail" not in ln[2]:
                return int(ln[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no live replica follows the master on :{master_port}")

    def role(self, port: int) -> str:
        """'master' or 'slave', as the node on `port` reports itself."""
        out = self._cli(port, "role").split()
        return out[0] if out else ""

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (no shutdown, no final fsync)."""
        n = self._node(port)
        os.kill(n.proc.pid, signal.SIGKILL)
        n.proc.wait(timeout=10)

    def pause(self, port: int) -> None:
        """SIGSTOP the node on `port`: it stops reading (a replica falls behind its master)."""
        os.kill(self._node(port).proc.pid, signal.SIGSTOP)

    def drop_replicas(self, master_port: int) -> None:
        """The master closes its replication links: what it writes next reaches no replica until
        the replica reconnects (about a second later, unless paused)."""
        self._cli(master_port, "client", "kill", "type", "replica")

    def resume(self, port: int) -> None:
        os.kill(self._node(port).proc.pid, signal.SIGCONT)

    def restart(self, port: int, timeout_s: float = 60.0) -> None:
        """Start a killed node again with its config: it rejoins (as a replica if it was replaced)."""
        n = self._node(port)
        if n.proc is not None and n.proc.poll() is None:
            return
        self._start(n)
        self._wait(lambda: self._cli(n.port, "ping").strip() == "PONG", f"redis node :{n.port}", timeout_s)

    def down(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(timeout=10)
        for n in self.nodes:
            for name in ("appendonlydir", "dump.rdb"):
                shutil.rmtree(n.dir / name, ignore_errors=True)  # logs stay for a failed run's post-mortem
