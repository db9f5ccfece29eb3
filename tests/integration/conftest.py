"""Session fixtures for the real stack: Kafka (KRaft), Redis and Ray, started once per session.

Order of preference:
1. servers named by RECSTREAM_KAFKA_BOOTSTRAP and RECSTREAM_REDIS_URL (used as they are);
2. testcontainers, when a Docker engine is reachable and RECSTREAM_TEST_CONTAINERS=1;
3. the local stack launcher (deploy/local) on ports the OS reports free, with its data, logs and
   pid files in the session's pytest temp dir (the Kafka jars stay in the shared cache), stopped
   at the end of the session. Sessions run side by side on one machine never share a server.
Nothing is skipped for a missing server: if none can be had, the fixture fails loudly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from recstream.settings import Settings


@dataclass(frozen=True)
class StackEndpoints:
    kafka_bootstrap: str
    redis_url: str
    stack: object | None = None  # the LocalStack when we started one (for restart tests)


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def stack_endpoints(tmp_path_factory) -> StackEndpoints:
    kafka, redis_url = os.environ.get("RECSTREAM_KAFKA_BOOTSTRAP"), os.environ.get("RECSTREAM_REDIS_URL")
    if kafka and redis_url:
        yield StackEndpoints(kafka, redis_url)
        return
    if os.environ.get("RECSTREAM_TEST_CONTAINERS") == "1" and _docker_reachable():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as k, RedisContainer() as r:
            url = f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
            yield StackEndpoints(k.get_bootstrap_server(), url)
        return
    from deploy.local import LocalStack, StackConfig, free_ports

    home = Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))
    kafka_port, controller_port, redis_port = free_ports(3)
    cfg = StackConfig(home=home, state_dir=tmp_path_factory.mktemp("stack"), kafka_port=kafka_port,
                      kafka_controller_port=controller_port, redis_port=redis_port)
    stack = LocalStack(cfg)
    try:
        stack.up()
        yield StackEndpoints(cfg.kafka_bootstrap, cfg.redis_url, stack)
    finally:
        stack.down()
        import shutil

        shutil.rmtree(cfg.stack_dir / "kafka" / "data", ignore_errors=True)  # logs stay for a failed run's post-mortem


@pytest.fixture(scope="session")
def redis_url(stack_endpoints) -> str:
    return stack_endpoints.redis_url


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_endpoints) -> str:
    return stack_endpoints.kafka_bootstrap


@pytest.fixture(scope="session")
def scratch_home(tmp_path_factory) -> Path:
    """RECSTREAM_HOME of the tests' settings (Feast repositories): the session's temp dir, not ~/.cache."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def settings(stack_endpoints, scratch_home) -> Settings:
    """Settings with topics and a Redis prefix unique to one test, so tests never see each other's
    data; removed from the servers afterwards (tests/integration/scratch.py)."""
    from tests.integration.scratch import scratch

    with scratch(stack_endpoints, scratch_home) as s:
        yield s


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster (three masters, one replica each, on loopback), once per session;
    deploy/local/redis_cluster.py. Only the tests that ask for it start it."""
    from deploy.local.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def cluster_settings(stack_endpoints, redis_cluster, scratch_home) -> Settings:
    """As `settings`, on the Redis Cluster with the partitioned key layout and a 6-partition
    events topic (so every master holds some partitions' state)."""
    from tests.integration.scratch import scratch

    with scratch(stack_endpoints, scratch_home, redis_url=redis_cluster.url, topic_partitions=6) as s:
        assert s.redis_key_layout == "partitioned"
        yield s


@pytest.fixture(scope="session")
def ray_serve():
    """One local Ray instance and Serve HTTP proxy for the session, on a port the OS reports free
    (RECSTREAM_TEST_SERVE_PORT pins one)."""
    import ray
    from ray import serve

    from deploy.local import free_ports

    port = int(os.environ.get("RECSTREAM_TEST_SERVE_PORT") or free_ports(1)[0])
    from services.launch import PROXY_READY_CHECK_TIMEOUT_S

    # as `recstream serve` does (services/launch.py): seen killing the proxy at load 10 here
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", PROXY_READY_CHECK_TIMEOUT_S)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="recstream-test",
             configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    """A 3-node KRaft cluster (each node broker + controller) with its own redis-server, on ports
    the OS reports free, for the failover tests that kill a broker; started only when a test asks
    for it, and never the servers of `stack_endpoints` (killing a broker there would disturb every
    other test of the session). Its home is a temp dir (the stack in `<home>/stack`, as
    `recstream stack` finds it there) with the Kafka jars linked from the shared cache."""
    from deploy.local import LocalStack, StackConfig, free_ports

    shared = StackConfig(home=Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))).kafka_libs
    home = tmp_path_factory.mktemp("cluster-home")
    if shared.exists():
        (home / "cache" / shared.parent.name).mkdir(parents=True)
        (home / "cache" / shared.parent.name / "libs").symlink_to(shared)
    kafka_port, controller_port, redis_port = free_ports(3)
    cfg = StackConfig(home=home, kafka_port=kafka_port, kafka_controller_port=controller_port, redis_port=redis_port,
                      kafka_brokers=3)
    stack = LocalStack(cfg)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        import shutil

        for name in stack.kafka_node_names():
            shutil.rmtree(cfg.stack_dir / name / "data", ignore_errors=True)
