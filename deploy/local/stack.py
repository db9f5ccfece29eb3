"""Start, stop and inspect the local stack: Apache Kafka 4 (KRaft) and redis-server.

Kafka's jars are resolved from Maven Central with the project's `kafka-pom.xml` into
`<home>/cache/kafka-<version>/libs` (no tarball), storage is formatted with
`kafka.tools.StorageTool format --standalone` as `bin/kafka-storage.sh` does, and the broker
runs as `java -cp libs/* kafka.Kafka server.properties` with a combined broker+controller
config on loopback. Redis runs with append-only persistence so a restart loses nothing.

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
from dataclasses import dataclass, field
from pathlib import Path

from recstream.errors import StackError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KAFKA_VERSION = "4.1.1"

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
    kafka_heap_mb: int = 512  # a single-node dev broker; keeps room for Ray and torch on 2 cores / small boxes
    ready_timeout_s: float = 90.0

    def __post_init__(self) -> None:
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
        if not (self._running_pid("kafka") or self._running_pid("redis")):
            return None
        try:
            return {k: int(v) for k, v in json.loads(self._ports_file().read_text()).items() if k in PORT_SETTINGS}
        except (OSError, ValueError, AttributeError):
            return None

    def _check_same_ports(self) -> None:
        running = self.started_ports()
        if running and running != self.config.ports:
            changed = ", ".join(f"{PORT_SETTINGS[k]}: running on {running.get(k)}, configured {v}"
                                for k, v in self.config.ports.items() if running.get(k) != v)
            raise StackError(f"the stack in {self.dir} is running on other ports ({changed}); stop it first with "
                             f"`recstream stack down` (it stops what runs there, whatever the ports) or restore the settings")

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

    def _kafka_properties(self, d: Path) -> Path:
        c = self.config
        props = f"""# generated by recstream stack: single-node KRaft, combined broker + controller
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={c.host}:{c.kafka_controller_port}
listeners=PLAINTEXT://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port}
advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={d / 'data'}
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
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
        if self._running_pid("kafka"):
            return
        self._check_port_free("kafka", "kafka_port")
        self._check_port_free("kafka controller", "kafka_controller_port")
        d = self.dir / "kafka"
        d.mkdir(parents=True, exist_ok=True)
        props = self._kafka_properties(d)
        if not (d / "data" / "meta.properties").exists():
            cluster_id = self._cluster_id(d)
            r = subprocess.run(self._java_cmd("kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={cluster_id}",
                                              "-c", str(props), "--ignore-formatted"), capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"kafka storage format failed: {(r.stdout + r.stderr)[-2000:]}")
        self._spawn("kafka", self._java_cmd("kafka.Kafka", str(props), heap_mb=self.config.kafka_heap_mb), d)

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
        if not _port_open(self.config.host, self.config.kafka_port):
            return False
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap, request_timeout_ms=3000,
                                     client_id="recstream-stack-probe")
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()
        except Exception as e:  # any client error means "not ready yet"
            log.debug("kafka not ready: %s", e)
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
        self._ports_file().write_text(json.dumps(self.config.ports))
        if redis:
            self._start_redis()
        if kafka:
            self._start_kafka()
        if redis:
            self._wait("redis", self.redis_ready)
        if kafka:
            self._wait("kafka", self.kafka_ready)
        return self.status()

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop the services this stack started (SIGTERM, then SIGKILL after timeout_s)."""
        for name in ("kafka", "redis"):
            self.stop(name, timeout_s=timeout_s)

    def stop(self, name: str, timeout_s: float = 30.0, kill: bool = False) -> None:
        pid = self._running_pid(name)
        if pid is None:
            self._pidfile(name).unlink(missing_ok=True)
            return
        ports = self.started_ports() or self.config.ports  # what it listens on, whatever is configured now
        # The server leads its own process group (start_new_session); signalling the group also
        # reaches forked children (redis' AOF-rewrite child) that would keep the port open.
        self._signal_group(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing", name, pid, timeout_s)
            self._signal_group(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.1)
        port = ports["redis_port"] if name == "redis" else ports["kafka_port"]
        deadline = time.monotonic() + timeout_s
        while _port_open(self.config.host, port) and time.monotonic() < deadline:
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
        port; one running on other ports than configured reports them in `running_on`."""
        kafka_running = self._running_pid("kafka") is not None
        redis_running = self._running_pid("redis") is not None
        running = self.started_ports()
        return StackStatus(
            kafka_running=kafka_running,
            kafka_ready=kafka_running and self.kafka_ready(),
            redis_running=redis_running,
            redis_ready=redis_running and self.redis_ready(),
            kafka_bootstrap=self.config.kafka_bootstrap,
            redis_url=self.config.redis_url,
            stack_dir=str(self.dir),
            ports=self.config.ports,
            running_on=running if running and running != self.config.ports else None,
        )
