import pytest

from deploy.local import LocalStack, StackConfig
from recstream.errors import StackError


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
        stack = LocalStack(StackConfig(home=tmp_path, redis_port=port, kafka_port=port + 1 if port < 65000 else 20001,
                                       kafka_controller_port=port + 2 if port < 65000 else 20002))
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is busy"):
            stack.up(kafka=False)
    finally:
        s.close()


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="java not found"):
        LocalStack(StackConfig(home=tmp_path)).ensure_java()


def test_status_of_a_stack_that_never_ran(tmp_path):
    st = LocalStack(StackConfig(home=tmp_path, kafka_port=39092, kafka_controller_port=39093, redis_port=36379)).status()
    assert not st.kafka_running and not st.redis_running and not st.ready


def test_a_cluster_id_that_looks_like_an_option_reaches_the_formatter_whole(tmp_path, monkeypatch):
    """One generated id in 64 starts with '-'; passed as a separate argument, the storage tool's
    parser took it for an option and the stack never started."""
    import subprocess

    stack = LocalStack(StackConfig(home=tmp_path, kafka_port=29911, kafka_controller_port=29912, redis_port=29913))
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
