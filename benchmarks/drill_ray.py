"""The two-node Ray drill: the worker node that holds the ranker loses its raylet and comes back.

A Ray cluster of two nodes on one host, each started with `ray start` as an operator would (own
temp dir and ports, so nothing else on the machine is touched): the head carries the custom
resource `serve_node` and runs the Serve controller, the HTTP proxy (HeadOnly) and the ingress,
retrieval and coarse deployments (ServeConfig.stage_resources); the worker carries `ranker_node`
and runs the only ranker replica (ServeConfig.ranker_resources). The app is the split layout of
services/app.py with small random models and real user state in Redis (BSE tables, seen sets,
popularity) and impressions logged to Kafka, both from a stack the drill starts for itself.

`clients` closed-loop clients send /v1/recommend without pause while the drill
1. lets the app answer for `before_s`,
2. SIGKILLs the worker node's raylet (its workers, the ranker replica among them, exit when their
   raylet is gone) and leaves the node down for `down_s`,
3. starts a new worker node with `ray start --address ... --resources '{"ranker_node": 1}'`, and
   waits until answers are undegraded again (at most `recovery_timeout_s`), then `after_s` more.

Every answer is classified by when it was sent: before the kill, while the node was down, between
the restart and the first undegraded answer (recovering), after recovery. Counted: requests,
errors (a non-200 status or a connection error: the goal is none in any phase), degraded answers
(`degraded: true`) with their reasons. The ranker's fallback is the coarse order, so while the
node is down every answer is expected degraded with a `ranker:*` reason, and none after recovery.

Writes `reports/drill_ray.json` (flat keys `ray_drill_*`) and `reports/drill_ray.md`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local import free_ports
from recstream.settings import Settings

log = logging.getLogger(__name__)

RANKER_RESOURCE = "ranker_node"
SERVE_RESOURCE = "serve_node"
APP_NAME = "recstream-drill"
PHASES = ("before", "down", "recovering", "after")


@dataclass(frozen=True)
class RayDrillConfig:
    """One drill run. Defaults: 20 s of answers, the worker down 30 s (GCS marks a node dead only
    after its health checks fail for about 15 s), then up to 180 s for the ranker to come back."""

    clients: int = 4
    before_s: float = 20.0
    down_s: float = 30.0
    recovery_timeout_s: float = 180.0
    after_s: float = 20.0
    n_items: int = 5_000
    k: int = 20
    head_cpus: int = 4  # logical: the replicas reserve fractions of a CPU (ServeConfig.num_cpus)
    worker_cpus: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("clients", "n_items", "k", "head_cpus", "worker_cpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        for name in ("before_s", "down_s", "recovery_timeout_s", "after_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be > 0")


# ---- the two Ray nodes -----------------------------------------------------------------------------

class RayNodes:
    """A head and worker nodes started with `ray start`, each in its own temp dir under `base`, on
    ports the OS reports free. Processes are found by their temp dir in their command line, so
    stopping them never touches another Ray on the machine (unlike `ray stop`)."""

    def __init__(self, base: Path, head_cpus: int, worker_cpus: int):
        self.base, self.head_cpus, self.worker_cpus = base, head_cpus, worker_cpus
        self.gcs_port = 0
        self.workers: list[Path] = []
        self.ray = str(Path(sys.executable).parent / "ray")
        repo = str(Path(__file__).resolve().parent.parent)
        # Replicas import the project (services, scoring, ...): from the repo, as the driver does.
        # A token of the drill's own for its cluster (Ray 2.60 turns token authentication on by
        # default): every node and the driver carry it, and no token file of the user's is read.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **self.auth, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # as `recstream serve` does (services/launch.py): the proxy is slow to start on a busy host
                    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, temp_dir: Path, *args: str) -> None:
        temp_dir.mkdir(parents=True)
        # Every port a node opens is one the OS reports free: two nodes share the host's ports, and
        # the defaults (dashboard agent 52365, client server 10001) collide with each other and with
        # any other Ray on the machine.
        nm, om, agent_http, agent_grpc, runtime_env, metrics = free_ports(6)
        cmd = [self.ray, "start", "--temp-dir", str(temp_dir), "--node-ip-address", "127.0.0.1",
               "--node-manager-port", str(nm), "--object-manager-port", str(om),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
               "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", *args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr[-3000:]}")

    def start_head(self) -> None:
        self.gcs_port, client_port = free_ports(2)
        self._start(self.base / "head", "--head", "--port", str(self.gcs_port), "--ray-client-server-port",
                    str(client_port), "--include-dashboard", "false", "--num-cpus", str(self.head_cpus),
                    "--resources", json.dumps({SERVE_RESOURCE: 100}))

    def start_worker(self) -> None:
        d = self.base / f"worker{len(self.workers) + 1}"
        self._start(d, "--address", self.address, "--num-cpus", str(self.worker_cpus),
                    "--resources", json.dumps({RANKER_RESOURCE: 1}))
        self.workers.append(d)

    def pids(self, temp_dir: Path, name: str | None = None) -> list[int]:
        import psutil

        out = []
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(temp_dir) in cmd and (name is None or p.info["name"] == name):
                out.append(p.info["pid"])
        return out

    def kill_worker_raylet(self) -> int:
        """SIGKILL the current worker node's raylet; returns its pid."""
        [pid] = self.pids(self.workers[-1], "raylet")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop_all(self, timeout_s: float = 20.0) -> None:
        import psutil

        procs = [psutil.Process(pid) for pid in self.pids(self.base)]
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


# ---- load: closed-loop clients ---------------------------------------------------------------------

@dataclass
class _Answer:
    t_sent: float
    latency_s: float
    status: int  # 0: no HTTP answer (connection error, client timeout)
    degraded: bool = False
    reasons: tuple[str, ...] = ()
    error: str = ""


@dataclass
class _Load:
    """`clients` closed-loop clients in a thread of their own (an event loop), until stopped."""

    url: str
    clients: int
    users: int
    k: int
    timeout_s: float = 30.0
    answers: list[_Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "_Load":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="drill-clients", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)

    async def _main(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            await asyncio.gather(*(self._client(client, c) for c in range(self.clients)))

    async def _client(self, client, c: int) -> None:
        n = 0
        while not self._stop.is_set():
            body = {"user_id": f"b{(c * 7919 + n) % self.users}", "k": self.k}
            n += 1
            t = time.monotonic()
            try:
                r = await client.post(f"{self.url}/v1/recommend", json=body)
            except Exception as e:  # the request failed: an error of the drill, counted, never raised
                self.answers.append(_Answer(t, time.monotonic() - t, 0, error=f"{type(e).__name__}: {e}"[:200]))
                continue
            a = _Answer(t, time.monotonic() - t, r.status_code)
            if r.status_code == 200:
                doc = r.json()
                a.degraded, a.reasons = bool(doc["degraded"]), tuple(doc.get("degraded_reasons", ()))
            else:
                a.error = r.text[:200]
            self.answers.append(a)

    def undegraded_since(self, t: float, n: int) -> float | None:
        """Send time of the first of `n` consecutive undegraded answers sent after `t`, if any."""
        run = []
        for a in sorted((a for a in list(self.answers) if a.t_sent >= t), key=lambda a: a.t_sent):
            run = run + [a] if a.status == 200 and not a.degraded else []
            if len(run) >= n:
                return run[0].t_sent
        return None


# ---- the drill -------------------------------------------------------------------------------------

def _ranker_replica(app: str) -> tuple[str | None, str | None]:
    """(state, node id) of the newest ranker replica actor in the GCS's actor table (the state API
    would need the dashboard, which the drill's head does not run)."""
    import ray._private.state

    replicas = [a for a in ray._private.state.actors().values() if a["ActorClassName"] == f"ServeReplica:{app}:ranker"]
    if not replicas:
        return None, None
    a = max(replicas, key=lambda a: a["StartTime"] or 0)
    return a["State"], a["Address"]["NodeID"]


def _node_of_worker(nodes: RayNodes) -> str:
    import ray

    want = str(nodes.workers[-1])
    for n in ray.nodes():
        if n["Alive"] and RANKER_RESOURCE in n["Resources"] and want in n.get("ObjectStoreSocketName", ""):
            return n["NodeID"]
    raise RuntimeError(f"no live node with {RANKER_RESOURCE} and temp dir {want}: {ray.nodes()}")


def _use_auth(env: dict[str, str | None]) -> None:
    """Set (None: unset) the driver's Ray authentication variables and make Ray read them again:
    its config reads them once, at import, and caches the token (Ray's own ray.init refreshes it the
    same way when it turns token authentication on)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def run_drill(settings: Settings, work: Path, cfg: RayDrillConfig = RayDrillConfig(), progress=log.info) -> dict:
    """Run the drill against the Redis and Kafka of `settings` (state under its redis_prefix,
    removed afterwards) and return the flat `ray_drill_*` results."""
    import ray
    from ray import serve

    from benchmarks.serving import USERS, _clean, _write_user_state, save_bench_models
    from services.app import build_app
    from services.config import ServeConfig

    root = work / "artifacts"
    save_bench_models(root, cfg.n_items, seed=cfg.seed)
    _write_user_state(settings, root, cfg.n_items, seed=cfg.seed)
    # Deadlines long enough that a loaded 2-core host does not degrade answers by itself (what is
    # measured is the node's loss: with the default 20 ms Redis socket timeout a first run here
    # degraded 47 of 132 answers before the kill, on history/seen/BSE reads), short enough that a
    # ranker that never answers costs the request one second, and the breaker then skips it.
    config = ServeConfig(
        layout="split", ranker_deployment=True, port=free_ports(1)[0], artifacts_dir=str(root),
        user_feature_source="none", ranker_resources={RANKER_RESOURCE: 1}, stage_resources={SERVE_RESOURCE: 1},
        deadlines={"redis_timeout_ms": 500, "inputs_timeout_ms": 1000, "candidates_timeout_ms": 1000,
                   "coarse_timeout_ms": 1000, "ranker_timeout_ms": 1000},
        variants={"A": {"share": 1.0, "retrieval": {"name": "two_tower", "version": "bench"},
                        "coarse": {"name": "hcn", "version": "bench"}, "ranker": {"name": "ranker", "version": "bench"}}})
    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="rdrill-", dir="/tmp")), cfg.head_cpus, cfg.worker_cpus)
    load: _Load | None = None
    saved_env = {k: os.environ.get(k) for k in nodes.auth}
    try:
        t0 = time.monotonic()
        nodes.start_head()
        nodes.start_worker()
        progress(f"ray: head {nodes.address} and worker up in {time.monotonic() - t0:.1f} s")
        _use_auth(nodes.auth)
        ray.init(address=nodes.address, _node_ip_address="127.0.0.1", namespace="recstream-drill", log_to_driver=False,
                 configure_logging=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": config.host, "port": config.port},
                    logging_config={"log_level": "WARNING"})
        t0 = time.monotonic()
        serve.run(build_app(settings, config), name=APP_NAME, route_prefix="/")
        worker_node = _node_of_worker(nodes)
        addresses = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
        state, ranker_node = _ranker_replica(APP_NAME)
        if ranker_node != worker_node:
            raise RuntimeError(f"the ranker replica is on node {ranker_node} ({state}), not on the worker {worker_node}")
        progress(f"app deployed in {time.monotonic() - t0:.1f} s; ranker replica on the worker node {worker_node[:12]}")

        url = f"http://{config.host}:{config.port}"
        load = _Load(url, cfg.clients, USERS, cfg.k).start()
        time.sleep(cfg.before_s)
        t_kill = time.monotonic()
        pid = nodes.kill_worker_raylet()
        progress(f"SIGKILL worker raylet pid {pid}")
        node_dead_s = None
        while time.monotonic() - t_kill < cfg.down_s:
            if node_dead_s is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker_node):
                node_dead_s = time.monotonic() - t_kill
                progress(f"GCS marked the worker node dead {node_dead_s:.1f} s after the kill")
            time.sleep(0.5)
        t_restart = time.monotonic()
        nodes.start_worker()
        t_worker_up = time.monotonic()
        progress(f"worker restarted ({t_worker_up - t_restart:.1f} s for `ray start`)")
        t_recovered = t_replica_alive = None
        while time.monotonic() - t_restart < cfg.recovery_timeout_s:
            if t_replica_alive is None:
                state, node = _ranker_replica(APP_NAME)
                if state == "ALIVE" and node not in (None, worker_node):
                    t_replica_alive = time.monotonic()
                    progress(f"the ranker replica is ALIVE on the new worker {t_replica_alive - t_restart:.1f} s "
                             "after the restart began")
            t_recovered = load.undegraded_since(t_restart, n=cfg.clients * 5)
            if t_recovered is not None:
                break
            time.sleep(0.5)
        if t_recovered is not None:
            progress(f"answers undegraded {t_recovered - t_restart:.1f} s after the restart")
            time.sleep(cfg.after_s)
        else:
            progress(f"answers still degraded {cfg.recovery_timeout_s:g} s after the restart")
        load.stop()
        state_end, node_end = _ranker_replica(APP_NAME)
        app_status = serve.status().applications[APP_NAME]
        deployment_status = {name: str(d.status) for name, d in app_status.deployments.items()}
    finally:
        if load is not None and load._thread.is_alive():
            load.stop()
        if ray.is_initialized():  # else serve.shutdown would start a Ray of its own to find Serve in
            try:
                serve.shutdown()
            except Exception as e:  # the report still comes; the processes are killed below
                log.warning("serve.shutdown: %s", e)
            ray.shutdown()
        _use_auth(saved_env)
        nodes.stop_all()
        shutil.rmtree(nodes.base, ignore_errors=True)
        _clean(settings)

    by = {p: [a for a in load.answers if _phase(a.t_sent, t_kill, t_restart, t_recovered) == p] for p in PHASES}
    res: dict = {
        "ray_drill_nodes": 2,
        "ray_drill_node_addresses": ",".join(addresses),
        "ray_drill_clients": cfg.clients,
        "ray_drill_requests": len(load.answers),
        "ray_drill_errors": sum(1 for a in load.answers if a.status != 200),
        "ray_drill_degraded": sum(1 for a in load.answers if a.degraded),
    }
    for p in PHASES:
        res[f"ray_drill_requests_{p}"] = len(by[p])
        res[f"ray_drill_errors_{p}"] = sum(1 for a in by[p] if a.status != 200)
        res[f"ray_drill_degraded_{p}"] = sum(1 for a in by[p] if a.degraded)
        res[f"ray_drill_ranker_fallbacks_{p}"] = sum(1 for a in by[p] if any(r.startswith("ranker:") for r in a.reasons))
    res["ray_drill_degraded_while_down"] = res.pop("ray_drill_degraded_down")
    res["ray_drill_degraded_after_recovery"] = res.pop("ray_drill_degraded_after")
    reasons = Counter(r for a in load.answers if a.degraded for r in a.reasons)
    down_lat = sorted(a.latency_s for a in by["down"]) or [0.0]
    res.update({
        "ray_drill_down_s": round(t_restart - t_kill, 2),
        "ray_drill_node_marked_dead_s": None if node_dead_s is None else round(node_dead_s, 2),
        "ray_drill_worker_start_s": round(t_worker_up - t_restart, 2),
        "ray_drill_replica_alive_s": None if t_replica_alive is None else round(t_replica_alive - t_restart, 2),
        "ray_drill_recovered": t_recovered is not None,
        "ray_drill_recovery_s": None if t_recovered is None else round(t_recovered - t_restart, 2),
        "ray_drill_p50_ms_before": _pct_ms([a.latency_s for a in by["before"]], 50),
        "ray_drill_p99_ms_before": _pct_ms([a.latency_s for a in by["before"]], 99),
        "ray_drill_p50_ms_while_down": _pct_ms(down_lat, 50),
        "ray_drill_p99_ms_while_down": _pct_ms(down_lat, 99),
        "ray_drill_p50_ms_after_recovery": _pct_ms([a.latency_s for a in by["after"]], 50),
        "ray_drill_ranker_replica_end_state": state_end,
        "ray_drill_ranker_replica_on_new_worker": node_end is not None and node_end != worker_node,
        "ray_drill_deployment_status_end": json.dumps(deployment_status, sort_keys=True),
        "ray_drill_degraded_reasons": json.dumps(dict(reasons.most_common()), sort_keys=True),
        "ray_drill_error_samples": json.dumps(sorted({a.error for a in load.answers if a.status != 200})[:5]),
    })
    return res


def _phase(t_sent: float, t_kill: float, t_restart: float, t_recovered: float | None) -> str:
    """The phase of an answer by its send time (an answer sent before the kill and answered after
    it counts as before: it was asked of a healthy cluster)."""
    if t_sent < t_kill:
        return "before"
    if t_sent < t_restart:
        return "down"
    if t_recovered is None or t_sent < t_recovered:
        return "recovering"
    return "after"


def _pct_ms(xs: list[float], q: int) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(len(xs) * q / 100))], 1)


def write_report(res: dict, cfg: RayDrillConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drill_ray.json").write_text(json.dumps(res, indent=2) + "\n")
    r = res
    degraded_key = {"down": "ray_drill_degraded_while_down", "after": "ray_drill_degraded_after_recovery"}
    rows = "\n".join(f"| {p} | {r[f'ray_drill_requests_{p}']:,} | {r[f'ray_drill_errors_{p}']} | "
                     f"{r[degraded_key.get(p, f'ray_drill_degraded_{p}')]:,} | {r[f'ray_drill_ranker_fallbacks_{p}']:,} |"
                     for p in PHASES)
    recovery = (f"Answers were undegraded again **{r['ray_drill_recovery_s']} s** after the restart began"
                if r["ray_drill_recovered"] else
                f"Answers were **not** undegraded within {cfg.recovery_timeout_s:g} s of the restart")
    md = f"""# Two-node Ray drill

`recstream drill ray`: a Ray cluster of two nodes on one host, each started with `ray start` (own temp
dir and ports; `--node-ip-address 127.0.0.1` given, the nodes' addresses as Ray lists them:
{r['ray_drill_node_addresses']}; the HTTP proxy and the clients on 127.0.0.1): the head ({cfg.head_cpus} logical CPUs, resource `{SERVE_RESOURCE}`) runs the Serve controller, the
proxy (HeadOnly), the ingress, retrieval and coarse deployments (`stage_resources`); the worker
({cfg.worker_cpus} CPU, resource `{RANKER_RESOURCE}`) runs the only ranker replica (`ranker_resources`). The split
layout of services/app.py with random models ({cfg.n_items:,} items), user state in Redis and impressions
logged to Kafka. {cfg.clients} closed-loop clients sent /v1/recommend (k={cfg.k}) throughout; after
{cfg.before_s:g} s the worker's raylet was SIGKILLed, the node left down {r['ray_drill_down_s']} s (the GCS marked it
dead {r['ray_drill_node_marked_dead_s']} s after the kill), then a new worker node was started with
`ray start --address ... --resources '{{"{RANKER_RESOURCE}": 1}}'` ({r['ray_drill_worker_start_s']} s).

| phase (by send time) | requests | errors | degraded (any reason) | of which the ranker's fallback |
|---|---|---|---|---|
{rows}
| **all** | **{r['ray_drill_requests']:,}** | **{r['ray_drill_errors']}** | {r['ray_drill_degraded']:,} | |

Phases: before the kill; down (kill to restart); recovering (restart to the first of
{cfg.clients * 5} consecutive undegraded answers); after recovery ({cfg.after_s:g} s more).
{recovery}. Nothing was redeployed: the Serve controller replaced the dead replica by itself, and
the replacement, which needs `{RANKER_RESOURCE}`, could only be placed once a node offered it again.
Its actor was ALIVE in the GCS {r['ray_drill_replica_alive_s']} s after the restart began
({r['ray_drill_worker_start_s']} s of which `ray start` took); how the rest divides between the
controller's scheduling and the worker process's start on the busy host is not measured. Answers
are undegraded once the replica has loaded its models, the ingress's handle routes to it and the
ranker's circuit breaker lets a probe through (it retries every second). Answers sent while the node
was down but not degraded ({r['ray_drill_requests_down'] - r['ray_drill_degraded_while_down']}) are
not timed by the drill; the likely ones are those of the first moment after the kill, before the
ranker's process noticed that its raylet was gone. The ranker replica ended {r['ray_drill_ranker_replica_end_state']}, on the new worker node:
{r['ray_drill_ranker_replica_on_new_worker']}; deployments at the end: `{r['ray_drill_deployment_status_end']}`.

Degraded reasons (answers carrying each): `{r['ray_drill_degraded_reasons']}`.
Latency p50 / p99: before {r['ray_drill_p50_ms_before']} / {r['ray_drill_p99_ms_before']} ms; while down
{r['ray_drill_p50_ms_while_down']} / {r['ray_drill_p99_ms_while_down']} ms; after recovery p50
{r['ray_drill_p50_ms_after_recovery']} ms.

Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other work; Python {platform.python_version()}.
"""
    (out_dir / "drill_ray.md").write_text(md)
