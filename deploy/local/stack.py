"""Start, stop and inspect the local stack: Apache Kafka 4 (KRaft) and redis-server.

Kafka's jars are resolved from Maven Central with the project's `kafka-pom.xml` into
`<home>/cache/kafka-<version>/libs` (no tarball), storage is formatted with
`kafka.tools.StorageTool format --standalone` as `bin/kafka-storage.sh` does, and the broker
runs as `java -cp libs/* kafka.Kafka server.properties` with a combined broker+controller
config on loopback. Redis runs with append-only persistence so a restart loses nothing.

`kafka_brokers=3` (`recstream stack up --brokers 3`) runs three nodes instead, each a combined
broker+controller, with a static quorum of all three as voters: one JVM per node is as much as a
dev box affords, and a 3-voter quorum survives the loss of any one node, broker and controller
alike, which is what the failover drills kill. Node 1 listens on the configured ports (so every
client that knows only the default bootstrap still finds the cluster); the other nodes' ports
come from the OS on the first start and are kept in `kafka-cluster.json` with the cluster id,
because the voter list formatted into each node's storage names them: a restarted node must come
back where it was. Internal topics (consumer offsets, transactions) and auto-created topics get
replication factor min(3, brokers) and min.insync.replicas 2 from three brokers on. Node data
lives in `kafka-<id>/` (the single broker's in `kafka/`), so the two layouts never share storage.

Everything lives under one directory (`<home>/stack`: data, logs, pid files, and `ports.json`,
the ports the running services were started on); `up` is idempotent (a healthy running service
is left alone) and `down` stops only what it started. Ports come from the settings
RECSTREAM_STACK_KAFKA_PORT, RECSTREAM_STACK_KAFKA_CONTROLLER_PORT and RECSTREAM_STACK_REDIS_PORT
(see `recstream.settings`); `up` refuses to start on other ports than a stack still running.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from recstream.errors import StackError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KAFKA_VERSION = "4.1.1"

# One JVM per node on one machine: five is already a lot for a dev box; 3 is the replicated layout.
MAX_BROKERS = 5

# StackConfig port field -> the environment variable (a recstream.settings field) that sets it.
PORT_SETTINGS = {"kafka_port": "RECSTREAM_STACK_KAFKA_PORT",
                 "kafka_controller_port": "RECSTREAM_STACK_KAFKA_CONTROLLER_PORT",
                 "redis_port": "RECSTREAM_STACK_REDIS_PORT"}


def _default_home() -> Path:
    return Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))


@dataclass(frozen=True)
class StackConfig:
    home: Path = field(default_factory=_default_home)
    stack_name: str = "stack"  # data/logs folder under home, unless state_dir is given
    state_dir: Path | None = None  # data, logs and pid files; tests keep theirs in a pytest temp dir
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    redis_port: int = 16379
    kafka_heap_mb: int = 512  # per broker; keeps room for Ray and torch on 2 cores / small boxes
    ready_timeout_s: float = 90.0
    kafka_brokers: int = 1  # Kafka nodes, 1..MAX_BROKERS

    def __post_init__(self) -> None:
        if not 1 <= self.kafka_brokers <= MAX_BROKERS:
            raise StackError(f"kafka_brokers ({self.kafka_brokers}) must be in 1..{MAX_BROKERS}")
        ports = {"kafka_port": self.kafka_port, "kafka_controller_port": self.kafka_controller_port, "redis_port": self.redis_port}
        if len(set(ports.values())) != 3:
            raise StackError(f"stack ports must differ: {ports}")
        for name, p in ports.items():
            if not 1024 <= p <= 65535:
                raise StackError(f"{name} ({p}) must be in 1024..65535")

    @property
    def stack_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.home / self.stack_name

    @property
    def ports(self) -> dict[str, int]:
        return {"kafka_port": self.kafka_port, "kafka_controller_port": self.kafka_controller_port,
                "redis_port": self.redis_port}

    @property
    def kafka_libs(self) -> Path:
        return self.home / "cache" / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"


@dataclass
class StackStatus:
    kafka_running: bool
    kafka_ready: bool
    redis_running: bool
    redis_ready: bool
    kafka_bootstrap: str
    redis_url: str
    stack_dir: str
    ports: dict[str, int] = field(default_factory=dict)
    # The ports the running services were started on, when they differ from `ports`.
    running_on: dict[str, int] | None = None
    kafka_brokers: int = 1
    # Per Kafka node of a multi-broker stack: node_id, port, controller_port, running, ready.
    kafka_nodes: dict[str, dict] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.kafka_ready and self.redis_ready


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports the OS reports free right now (all bound at once, then released), for
    tests and tools that must not collide with whatever else runs on the machine."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalStack:
    """Manage the local Kafka + Redis processes described by a StackConfig."""

    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self.dir = self.config.stack_dir

    # ---------------------------------------------------------------- install

    def ensure_java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError("java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless)")
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            major = 0
        if major and major < 17:
            raise StackError(f"Kafka {KAFKA_VERSION} needs Java 17+, found: {out.splitlines()[0]}")
        return java

    def ensure_kafka_jars(self) -> Path:
        libs = self.config.kafka_libs
        marker = libs / ".complete"
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("mvn not found: Maven resolves the Kafka jars (Debian: apt-get install maven)")
        log.info("resolving Apache Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
        # A private temporary folder: two first starts at once (parallel test sessions) each
        # resolve into their own and the first rename wins.
        tmp = libs.with_name(f"libs.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        cmd = [mvn, "-q", "-B", "-f", str(HERE / "kafka-pom.xml"), "dependency:copy-dependencies",
               f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StackError(f"maven could not resolve Kafka {KAFKA_VERSION}: {(r.stdout + r.stderr)[-2000:]}")
        (tmp / ".complete").write_text(KAFKA_VERSION)  # inside, so the rename publishes jars and marker at once
        try:
            tmp.rename(libs)
        except OSError:  # libs exists: a concurrent run won, or an interrupted run left an incomplete copy
            if not marker.exists():
                stale = libs.with_name(f"libs.stale-{uuid.uuid4().hex[:8]}")
                libs.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
                tmp.rename(libs)
            shutil.rmtree(tmp, ignore_errors=True)
        return libs

    def ensure_redis(self) -> str:
        exe = shutil.which("redis-server")
        if exe:
            return exe
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log.info("redis-server missing: installing the Debian package")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    raise StackError(f"{' '.join(cmd)} failed: {r.stderr[-1000:]}")
            exe = shutil.which("redis-server")
        if not exe:
            raise StackError("redis-server not found: install it (Debian/Ubuntu: sudo apt-get install redis-server; "
                             "macOS: brew install redis) or point RECSTREAM_REDIS_URL at a running Redis")
        return exe

    # ---------------------------------------------------------------- processes

    def _pidfile(self, name: str) -> Path:
        return self.dir / name / f"{name}.pid"

    def _running_pid(self, name: str) -> int | None:
        pf = self._pidfile(name)
        if not pf.exists():
            return None
        try:
            pid = int(pf.read_text().strip())
        except ValueError:
            return None
        return pid if _pid_alive(pid) else None

    def _spawn(self, name: str, cmd: list[str], cwd: Path) -> int:
        logf = open(cwd / f"{name}.log", "ab")
        # A new session: the server outlives the launching CLI and ignores its Ctrl-C.
        p = subprocess.Popen(cmd, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self._pidfile(name).write_text(str(p.pid))
        return p.pid

    def _check_port_free(self, service: str, port_field: str) -> None:
        port = getattr(self.config, port_field)
        if _port_open(self.config.host, port):
            raise StackError(f"{service}: port {self.config.host}:{port} is busy with a process this stack did not start; "
                             f"stop it or choose another port ({PORT_SETTINGS[port_field]}=<port>)")

    # ports.json: what the running services listen on, so status/down/up never mistake another
    # stack's servers (or the configured ports of a stack started differently) for this one's.

    def _ports_file(self) -> Path:
        return self.dir / "ports.json"

    def started_ports(self) -> dict[str, int] | None:
        """The ports the running services were started on (None when nothing runs)."""
        if not (self._running_kafka_nodes() or self._running_pid("redis")):
            return None
        try:
            return {k: int(v) for k, v in json.loads(self._ports_file().read_text()).items() if k in PORT_SETTINGS}
        except (OSError, ValueError, AttributeError):
            return None

    def running_brokers(self) -> int | None:
        """How many Kafka nodes the running stack was started with (None when no node runs)."""
        if not self._running_kafka_nodes():
            return None
        try:
            return int(json.loads(self._ports_file().read_text()).get("kafka_brokers", 1))
        except (OSError, ValueError, AttributeError):
            return None

    def _check_same_ports(self) -> None:
        running = self.started_ports()
        if running and running != self.config.ports:
            changed = ", ".join(f"{PORT_SETTINGS[k]}: running on {running.get(k)}, configured {v}"
                                for k, v in self.config.ports.items() if running.get(k) != v)
            raise StackError(f"the stack in {self.dir} is running on other ports ({changed}); stop it first with "
                             f"`recstream stack down` (it stops what runs there, whatever the ports) or restore the settings")
        brokers = self.running_brokers()
        if brokers is not None and brokers != self.config.kafka_brokers:
            raise StackError(f"the stack in {self.dir} runs {brokers} Kafka broker(s), {self.config.kafka_brokers} "
                             f"asked for; stop it first with `recstream stack down`")

    # ---------------------------------------------------------------- kafka nodes

    def kafka_node_names(self) -> list[str]:
        """The configured layout's Kafka nodes: `kafka` alone, or `kafka-1` .. `kafka-<n>`."""
        n = self.config.kafka_brokers
        return ["kafka"] if n == 1 else [f"kafka-{i}" for i in range(1, n + 1)]

    def _running_kafka_nodes(self) -> list[str]:
        """Every Kafka node of this stack dir that runs, whatever layout is configured now (so
        `down` and `status` find a 3-broker stack started with `--brokers 3` without the flag)."""
        if not self.dir.is_dir():
            return []
        names = [d.name for d in self.dir.iterdir()
                 if d.is_dir() and (d.name == "kafka" or (d.name.startswith("kafka-") and d.name[6:].isdigit()))]
        return sorted(n for n in names if self._running_pid(n))

    def _cluster_file(self) -> Path:
        return self.dir / "kafka-cluster.json"

    def _cluster_layout(self) -> dict:
        """Cluster id and per-node ports of the multi-broker layout, chosen on the first start and
        kept: each node's storage is formatted with the voter list, so its ports are fixed."""
        f = self._cluster_file()
        c = self.config
        if f.exists():
            layout = json.loads(f.read_text())
            if len(layout["nodes"]) != c.kafka_brokers:
                raise StackError(f"{f} describes a {len(layout['nodes'])}-broker cluster, {c.kafka_brokers} asked for; "
                                 f"remove {self.dir} (its Kafka data) to start another layout there")
            first = layout["nodes"]["kafka-1"]
            if (first["port"], first["controller_port"]) != (c.kafka_port, c.kafka_controller_port):
                raise StackError(f"{f}: node 1 was formatted on ports {first['port']}/{first['controller_port']}, "
                                 f"configured {c.kafka_port}/{c.kafka_controller_port}; restore "
                                 f"{PORT_SETTINGS['kafka_port']}/{PORT_SETTINGS['kafka_controller_port']} or remove {self.dir}")
            return layout
        taken = {c.kafka_port, c.kafka_controller_port, c.redis_port}
        others = [p for p in free_ports(2 * c.kafka_brokers + 3, c.host) if p not in taken][: 2 * (c.kafka_brokers - 1)]
        nodes = {"kafka-1": {"node_id": 1, "port": c.kafka_port, "controller_port": c.kafka_controller_port}}
        for i in range(2, c.kafka_brokers + 1):
            nodes[f"kafka-{i}"] = {"node_id": i, "port": others[2 * (i - 2)], "controller_port": others[2 * (i - 2) + 1]}
        import base64

        layout = {"cluster_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="), "nodes": nodes}
        self.dir.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(layout, indent=2))
        return layout

    def _node(self, name: str) -> dict:
        """node_id, port and controller_port of one Kafka node."""
        if name == "kafka":
            return {"node_id": 1, "port": self.config.kafka_port, "controller_port": self.config.kafka_controller_port}
        try:
            return json.loads(self._cluster_file().read_text())["nodes"][name]
        except (OSError, KeyError, ValueError) as e:
            raise StackError(f"no Kafka node {name} in {self._cluster_file()}: {e}") from e

    def _node_name(self, node_id: int) -> str:
        names = self.kafka_node_names()
        if not 1 <= node_id <= len(names):
            raise StackError(f"node_id ({node_id}) must be in 1..{len(names)} (this stack has {len(names)} broker(s))")
        return names[node_id - 1]

    def bootstrap_servers(self) -> str:
        """host:port of every configured Kafka node, comma-separated: a client given them all still
        bootstraps while any one node is down."""
        if self.config.kafka_brokers == 1:
            return self.config.kafka_bootstrap
        nodes = self._cluster_layout()["nodes"]
        return ",".join(f"{self.config.host}:{n['port']}" for n in nodes.values())

    def broker_pid(self, node_id: int) -> int | None:
        """The running process of Kafka node `node_id` (1-based), or None."""
        return self._running_pid(self._node_name(node_id))

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one Kafka node (a crash: no controlled shutdown, no leadership hand-over) and
        wait until its port is closed."""
        self.stop(self._node_name(node_id), kill=True)

    def stop_broker(self, node_id: int, timeout_s: float = 30.0) -> None:
        """SIGTERM one Kafka node: a controlled shutdown that moves its leaderships first."""
        self.stop(self._node_name(node_id), timeout_s=timeout_s)

    def start_broker(self, node_id: int, wait: bool = True) -> None:
        """Start one Kafka node again (after kill_broker/stop_broker) on its own ports; with
        wait, return once it answers and the cluster lists it."""
        name = self._node_name(node_id)
        self._start_kafka_node(name)
        if wait:
            self._wait(name, lambda: self.kafka_node_ready(name))

    def _start_redis(self) -> None:
        if self._running_pid("redis"):
            return
        self._check_port_free("redis", "redis_port")
        exe = self.ensure_redis()
        d = self.dir / "redis"
        d.mkdir(parents=True, exist_ok=True)
        # appendfsync everysec: at most ~1 s of writes at risk on a host crash; a killed
        # redis-server process (the failure tests exercise) loses nothing already written.
        self._spawn("redis", [exe, "--bind", self.config.host, "--port", str(self.config.redis_port), "--dir", str(d),
                              "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                              "--protected-mode", "no", "--daemonize", "no"], d)

    def _kafka_properties(self, name: str, d: Path) -> Path:
        c = self.config
        node = self._node(name)
        n = c.kafka_brokers
        if n == 1:
            quorum = f"controller.quorum.bootstrap.servers={c.host}:{c.kafka_controller_port}"
        else:
            voters = ",".join(f"{v['node_id']}@{c.host}:{v['controller_port']}"
                              for v in self._cluster_layout()["nodes"].values())
            quorum = f"controller.quorum.voters={voters}"
        # The replication the platform's own topics get (recstream.kafka_io.ensure_topics), for the
        # broker's internal and auto-created topics too.
        rf, isr = min(3, n), (2 if n >= 3 else 1)
        # Every partition has a replica on each node of a 3-node cluster, so acks=all writes wait
        # for a crashed node until the controller fences it (no heartbeat for the session timeout,
        # 9 s by default) and drops it from the in-sync replicas: a shorter timeout on loopback,
        # where a missed heartbeat means a dead process, shortens that stall.
        fencing = ("broker.session.timeout.ms=6000\nbroker.heartbeat.interval.ms=1000\nreplica.lag.time.max.ms=10000\n"
                   if n > 1 else "")
        props = f"""# generated by recstream stack: KRaft, combined broker + controller, node {node['node_id']} of {n}
process.roles=broker,controller
node.id={node['node_id']}
{quorum}
listeners=PLAINTEXT://{c.host}:{node['port']},CONTROLLER://{c.host}:{node['controller_port']}
advertised.listeners=PLAINTEXT://{c.host}:{node['port']}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={d / 'data'}
num.partitions=4
default.replication.factor={rf}
min.insync.replicas={isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
{fencing}group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=67108864
"""
        path = d / "server.properties"
        path.write_text(props)
        return path

    def _java_cmd(self, main: str, *args: str, heap_mb: int | None = None) -> list[str]:
        java = self.ensure_java()
        libs = self.ensure_kafka_jars()
        cmd = [java]
        if heap_mb:
            cmd += [f"-Xms{heap_mb // 2}m", f"-Xmx{heap_mb}m"]
        cmd += ["-XX:+UseG1GC", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
                "-cp", f"{libs}/*", main, *args]
        return cmd

    def _start_kafka(self) -> None:
        if self.config.kafka_brokers > 1:
            self._cluster_layout()  # every node's ports, before the first node is formatted with them
        for name in self.kafka_node_names():
            self._start_kafka_node(name)

    def _start_kafka_node(self, name: str) -> None:
        if self._running_pid(name):
            return
        node = self._node(name)
        for what, port in (("kafka", node["port"]), ("kafka controller", node["controller_port"])):
            if _port_open(self.config.host, port):
                setting = {self.config.kafka_port: PORT_SETTINGS["kafka_port"],
                           self.config.kafka_controller_port: PORT_SETTINGS["kafka_controller_port"]}.get(port)
                hint = f"({setting}=<port>)" if setting else f"(or remove {self._cluster_file()} to choose new ones)"
                raise StackError(f"{what} {name}: port {self.config.host}:{port} is busy with a process this stack did "
                                 f"not start; stop it or choose another port {hint}")
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        props = self._kafka_properties(name, d)
        if not (d / "data" / "meta.properties").exists():
            if self.config.kafka_brokers == 1:
                fmt = ["--standalone", f"--cluster-id={self._cluster_id(d)}"]
            else:  # a static voter set (controller.quorum.voters): every node formats with the same id
                fmt = [f"--cluster-id={self._cluster_layout()['cluster_id']}"]
            r = subprocess.run(self._java_cmd("kafka.tools.StorageTool", "format", *fmt, "-c", str(props),
                                              "--ignore-formatted"), capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"kafka storage format of {name} failed: {(r.stdout + r.stderr)[-2000:]}")
        self._spawn(name, self._java_cmd("kafka.Kafka", str(props), heap_mb=self.config.kafka_heap_mb), d)

    @staticmethod
    def _cluster_id(d: Path) -> str:
        f = d / "cluster.id"
        if not f.exists():
            # Kafka's own format: 16 random bytes, url-safe base64 without padding. One id in 64
            # starts with "-", hence `--cluster-id=<id>` above: as a separate argument the
            # formatter's parser took it for an option.
            import base64
            f.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return f.read_text().strip()

    # ---------------------------------------------------------------- readiness

    def redis_ready(self) -> bool:
        try:
            with socket.create_connection((self.config.host, self.config.redis_port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kafka_ready(self) -> bool:
        """Every configured Kafka node answers and the cluster lists all of them."""
        return all(self.kafka_node_ready(name) for name in self.kafka_node_names())

    def kafka_node_ready(self, name: str) -> bool:
        """Node `name` answers a metadata request on its own port and the cluster lists it
        (a restarted node is back in the cluster, not only listening)."""
        node = self._node(name)
        if not _port_open(self.config.host, node["port"]):
            return False
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=f"{self.config.host}:{node['port']}", request_timeout_ms=3000,
                                     client_id="recstream-stack-probe")
            try:
                admin.list_topics()
                if self.config.kafka_brokers == 1:
                    return True
                brokers = {b["broker_id"] for b in admin.describe_cluster()["brokers"]}
                return node["node_id"] in brokers
            finally:
                admin.close()
        except Exception as e:  # any client error means "not ready yet"
            log.debug("kafka %s not ready: %s", name, e)
            return False

    def _wait(self, name: str, probe) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            if probe():
                return
            if not self._running_pid(name):
                tail = self._log_tail(name)
                raise StackError(f"{name} exited during start-up; last log lines:\n{tail}")
            time.sleep(0.5)
        raise StackError(f"{name} not ready after {self.config.ready_timeout_s}s; see {self.dir / name / (name + '.log')}:\n"
                         f"{self._log_tail(name)}")

    def _log_tail(self, name: str, n: int = 30) -> str:
        f = self.dir / name / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.exists() else "(no log)"

    # ---------------------------------------------------------------- public

    def up(self, kafka: bool = True, redis: bool = True) -> StackStatus:
        """Start what is not running and wait until it answers. Idempotent.

        Raises:
            StackError: a port is busy with something else, or this stack is already running on
                other ports than configured.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_same_ports()
        self._ports_file().write_text(json.dumps({**self.config.ports, "kafka_brokers": self.config.kafka_brokers}))
        if redis:
            self._start_redis()
        if kafka:
            self._start_kafka()
        if redis:
            self._wait("redis", self.redis_ready)
        if kafka:
            # One node at a time, each with its own deadline: three JVMs starting at once on two
            # cores take a while, and the quorum forms only once a majority runs.
            for name in self.kafka_node_names():
                self._wait(name, lambda name=name: self.kafka_node_ready(name))
        return self.status()

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop the services this stack started (SIGTERM, then SIGKILL after timeout_s), every
        Kafka node that runs whatever layout is configured now."""
        self._stop_all(self._running_kafka_nodes(), timeout_s=timeout_s)
        self.stop("redis", timeout_s=timeout_s)

    def stop(self, name: str, timeout_s: float = 30.0, kill: bool = False) -> None:
        self._stop_all([name], timeout_s=timeout_s, kill=kill)

    def _stop_all(self, names: list[str], timeout_s: float = 30.0, kill: bool = False) -> None:
        """Signal every named service at once, then wait for each: Kafka nodes stopped one after
        the other would leave the last ones waiting out their controlled shutdown on a quorum
        that is already gone."""
        ports = self.started_ports() or self.config.ports  # what it listens on, whatever is configured now
        pids = {}
        for name in names:
            pid = self._running_pid(name)
            if pid is None:
                self._pidfile(name).unlink(missing_ok=True)
                continue
            pids[name] = pid
            # The server leads its own process group (start_new_session); signalling the group also
            # reaches forked children (redis' AOF-rewrite child) that would keep the port open.
            self._signal_group(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name, pid in pids.items():
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid):
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing", name, pid, timeout_s)
                self._signal_group(pid, signal.SIGKILL)
                while _pid_alive(pid):
                    time.sleep(0.1)
        for name in pids:
            port = {"redis": ports["redis_port"], "kafka": ports["kafka_port"]}.get(name) or self._node(name)["port"]
            port_deadline = time.monotonic() + timeout_s
            while _port_open(self.config.host, port) and time.monotonic() < port_deadline:
                time.sleep(0.1)
            self._pidfile(name).unlink(missing_ok=True)

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def restart_redis(self, kill: bool = True) -> None:
        """Kill and restart redis-server (used by failure tests); AOF brings the data back."""
        self.stop("redis", kill=kill)
        self._start_redis()
        self._wait("redis", self.redis_ready)

    def status(self) -> StackStatus:
        """Whether this stack's services run (pid files) and answer on the configured ports. A
        service that does not run is never reported ready, even if something else answers on its
        port; one running on other ports than configured reports them in `running_on`. A
        multi-broker stack reports each node, and Kafka is ready when every node is."""
        names = self.kafka_node_names()
        brokers = self.running_brokers()
        if brokers is not None and brokers != self.config.kafka_brokers:  # report what runs, not what is configured
            return LocalStack(replace(self.config, kafka_brokers=brokers)).status()
        nodes = {}
        if len(names) > 1:
            for name in names:
                node = self._node(name) if self._cluster_file().exists() else {}
                running = self._running_pid(name) is not None
                nodes[name] = {**node, "running": running, "ready": running and self.kafka_node_ready(name)}
            kafka_running = any(n["running"] for n in nodes.values())
            kafka_ready = all(n["ready"] for n in nodes.values())
        else:
            kafka_running = self._running_pid("kafka") is not None
            kafka_ready = kafka_running and self.kafka_ready()
        redis_running = self._running_pid("redis") is not None
        running = self.started_ports()
        return StackStatus(
            kafka_running=kafka_running,
            kafka_ready=kafka_ready,
            redis_running=redis_running,
            redis_ready=redis_running and self.redis_ready(),
            kafka_bootstrap=self.bootstrap_servers() if len(names) == 1 or self._cluster_file().exists()
            else self.config.kafka_bootstrap,
            redis_url=self.config.redis_url,
            stack_dir=str(self.dir),
            ports=self.config.ports,
            running_on=running if running and running != self.config.ports else None,
            kafka_brokers=len(names),
            kafka_nodes=nodes,
        )
