import json
import os
import re
import socket
import threading

import pytest

from deploy.local import LocalStack, StackConfig, free_ports
from recstream.errors import StackError


def _cfg(tmp_path, **kw) -> StackConfig:
    """A config on ports the OS reports free now (issue 9, defect 6: never assume fixed ones)."""
    k, c, r = free_ports(3)
    return StackConfig(home=tmp_path, **{"kafka_port": k, "kafka_controller_port": c, "redis_port": r, **kw})


def test_ports_must_differ():
    with pytest.raises(StackError, match="ports must differ"):
        StackConfig(kafka_port=1234, kafka_controller_port=1234, redis_port=2345)


def test_busy_port_is_a_clear_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        stack = LocalStack(_cfg(tmp_path, redis_port=port))
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is busy"):
            stack.up(kafka=False)
    finally:
        s.close()


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="java not found"):
        LocalStack(StackConfig(home=tmp_path)).ensure_java()


def test_status_of_a_stack_that_never_ran(tmp_path):
    st = LocalStack(_cfg(tmp_path)).status()
    assert not st.kafka_running and not st.redis_running and not st.ready


def test_a_cluster_id_that_looks_like_an_option_reaches_the_formatter_whole(tmp_path, monkeypatch):
    """One generated id in 64 starts with '-'; passed as a separate argument, the storage tool's
    parser took it for an option and the stack never started."""
    import subprocess

    stack = LocalStack(_cfg(tmp_path))
    (stack.dir / "kafka").mkdir(parents=True)
    (stack.dir / "kafka" / "cluster.id").write_text("-wBr23gVTTCeAIaAzYqLMg")
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(stack, "_java_cmd", lambda main, *args, heap_mb=None: [main, *args])
    monkeypatch.setattr(stack, "_spawn", lambda *a, **k: 0)
    stack._start_kafka()
    [fmt] = [c for c in seen if c[0] == "kafka.tools.StorageTool"]
    assert "--cluster-id=-wBr23gVTTCeAIaAzYqLMg" in fmt


# ---------------------------------------------------------------- issue 9, defect 4: ports from settings


def _fake_redis() -> tuple[socket.socket, int]:
    """Someone else's Redis: answers PING with +PONG on a free port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                if conn.recv(64).startswith(b"PING"):
                    conn.sendall(b"+PONG\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_status_does_not_take_someone_elses_server_for_its_own(tmp_path):
    srv, port = _fake_redis()
    try:
        st = LocalStack(_cfg(tmp_path, redis_port=port)).status()
        assert not st.redis_running and not st.redis_ready
    finally:
        srv.close()


@pytest.mark.parametrize("busy", ["kafka_port", "kafka_controller_port", "redis_port"])
def test_the_busy_port_message_names_a_setting_that_moves_the_port(tmp_path, monkeypatch, busy):
    from deploy.local import commands
    from recstream.settings import Settings

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        stack = LocalStack(_cfg(tmp_path, **{busy: s.getsockname()[1]}))
        monkeypatch.setattr(stack, "ensure_kafka_jars", lambda: tmp_path)
        monkeypatch.setattr(stack, "_spawn", lambda *a, **k: pytest.fail("must not start anything"))
        with pytest.raises(StackError) as ei:
            (stack._start_kafka if busy.startswith("kafka") else stack._start_redis)()
    finally:
        s.close()
    [var] = re.findall(r"\b(RECSTREAM_STACK_[A-Z_]+_PORT)=", str(ei.value))
    [new_port] = free_ports(1)
    monkeypatch.setenv(var, str(new_port))
    cfg = commands._stack(Settings()).config
    assert getattr(cfg, busy) == new_port


def test_stack_commands_use_the_configured_ports(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli import main as cli
    from recstream import settings

    k, c, r = free_ports(3)
    for var, port in (("RECSTREAM_STACK_KAFKA_PORT", k), ("RECSTREAM_STACK_KAFKA_CONTROLLER_PORT", c),
                      ("RECSTREAM_STACK_REDIS_PORT", r)):
        monkeypatch.setenv(var, str(port))
    monkeypatch.setenv("RECSTREAM_HOME", str(tmp_path))
    for var in ("RECSTREAM_KAFKA_BOOTSTRAP", "RECSTREAM_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    settings.get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli.app, ["stack", "status"])
    finally:
        settings.get_settings.cache_clear()
    assert out.exit_code == 3, out.output  # nothing runs there
    st = json.loads(out.output)
    assert st["ports"] == {"kafka_port": k, "kafka_controller_port": c, "redis_port": r}
    assert st["kafka_bootstrap"] == f"127.0.0.1:{k}" and st["redis_url"] == f"redis://127.0.0.1:{r}/0"
    assert st["stack_dir"] == str(tmp_path / "stack")


def test_up_refuses_other_ports_than_the_running_stack(tmp_path):
    k, c, r, r2 = free_ports(4)
    running = StackConfig(home=tmp_path, kafka_port=k, kafka_controller_port=c, redis_port=r)
    stack = LocalStack(running)
    (stack.dir / "redis").mkdir(parents=True)
    stack._pidfile("redis").write_text(str(os.getpid()))  # "running": a live pid (this test's own)
    (stack.dir / "ports.json").write_text(json.dumps(running.ports))
    moved = LocalStack(StackConfig(home=tmp_path, kafka_port=k, kafka_controller_port=c, redis_port=r2))
    with pytest.raises(StackError, match="RECSTREAM_STACK_REDIS_PORT: running on"):
        moved.up(kafka=False)
    assert moved.status().running_on == running.ports


def test_broker_count_is_bounded():
    with pytest.raises(StackError, match=r"kafka_brokers \(6\) must be in 1..5"):
        StackConfig(kafka_brokers=6)


def _props(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_three_nodes_share_one_voter_set_and_replicate_internal_topics(tmp_path):
    stack = LocalStack(_cfg(tmp_path, kafka_brokers=3))
    assert stack.kafka_node_names() == ["kafka-1", "kafka-2", "kafka-3"]
    stack._cluster_layout()
    props = {}
    for name in stack.kafka_node_names():
        (stack.dir / name).mkdir()
        props[name] = _props(stack._kafka_properties(name, stack.dir / name))
    voters = {p["controller.quorum.voters"] for p in props.values()}
    assert len(voters) == 1
    voter_ports = [int(v.rsplit(":", 1)[1]) for v in voters.pop().split(",")]
    ports = [stack._node(n)["port"] for n in stack.kafka_node_names()]
    assert len(set(voter_ports + ports + [stack.config.redis_port])) == 7  # no two services share a port
    assert stack._node("kafka-1")["port"] == stack.config.kafka_port  # clients of the default bootstrap find it
    assert [p["node.id"] for p in props.values()] == ["1", "2", "3"]
    for p in props.values():
        assert (p["default.replication.factor"], p["min.insync.replicas"], p["offsets.topic.replication.factor"]) == ("3", "2", "3")
        assert "controller.quorum.bootstrap.servers" not in p
    assert stack.bootstrap_servers() == ",".join(f"127.0.0.1:{p}" for p in ports)


def test_a_single_broker_keeps_its_standalone_layout(tmp_path):
    stack = LocalStack(_cfg(tmp_path))
    (stack.dir / "kafka").mkdir(parents=True)
    p = _props(stack._kafka_properties("kafka", stack.dir / "kafka"))
    assert stack.kafka_node_names() == ["kafka"] and p["node.id"] == "1"
    assert p["controller.quorum.bootstrap.servers"] == f"127.0.0.1:{stack.config.kafka_controller_port}"
    assert (p["default.replication.factor"], p["min.insync.replicas"]) == ("1", "1")
    assert stack.bootstrap_servers() == stack.config.kafka_bootstrap


def test_node_ports_are_kept_across_starts_and_a_changed_layout_is_refused(tmp_path):
    """A restarted node must come back on the ports formatted into the voter list."""
    cfg = _cfg(tmp_path, kafka_brokers=3)
    first = LocalStack(cfg)._cluster_layout()
    assert LocalStack(cfg)._cluster_layout() == first
    from dataclasses import replace

    with pytest.raises(StackError, match="describes a 3-broker cluster, 5 asked for"):
        LocalStack(replace(cfg, kafka_brokers=5))._cluster_layout()
    with pytest.raises(StackError, match="node 1 was formatted on ports"):
        LocalStack(replace(cfg, kafka_port=cfg.kafka_port + 1 if cfg.kafka_port < 65535 else 1024))._cluster_layout()


def test_broker_helpers_name_the_nodes_they_know(tmp_path):
    stack = LocalStack(_cfg(tmp_path, kafka_brokers=3))
    with pytest.raises(StackError, match=r"node_id \(4\) must be in 1..3"):
        stack.kill_broker(4)
    assert stack.broker_pid(2) is None
    st = stack.status()
    assert st.kafka_brokers == 3 and not st.kafka_running and not st.ready
