"""Tests leave the servers as they found them: a scratch namespace's topics, keys and Feast folder
are removed afterwards, and the session's own stack keeps its state in pytest's temp dir."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka.admin import AdminClient

from pipelines.produce import produce_events
from tests.builders import event
from tests.integration.scratch import scratch

pytestmark = pytest.mark.integration


def _topics(bootstrap: str, prefix: str) -> set[str]:
    return {t for t in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
            if t.startswith(f"{prefix}.")}


def test_a_scratch_namespace_is_removed_from_the_servers(stack_endpoints, scratch_home):
    r = redis.Redis.from_url(stack_endpoints.redis_url)
    with scratch(stack_endpoints, scratch_home) as s:
        produce_events([event(k) for k in range(10)], s, progress=False)
        r.set(f"{s.redis_prefix}:x", 1)
        r.set(f"other:{s.redis_prefix}:kept", 1)  # not in the namespace
        r.set(b"\x01feast-entity-key" + f"recstream_{s.redis_prefix}".encode(), 1)  # a Feast row of its project
        (scratch_home / "feast" / s.redis_prefix).mkdir(parents=True)
        assert _topics(s.kafka_bootstrap, s.redis_prefix) == {s.events_topic, s.dlq_topic, s.impressions_topic}
    assert _topics(s.kafka_bootstrap, s.redis_prefix) == set()
    assert list(r.scan_iter(match=f"*{s.redis_prefix}*")) == [f"other:{s.redis_prefix}:kept".encode()]
    assert not (scratch_home / "feast" / s.redis_prefix).exists()
    r.delete(f"other:{s.redis_prefix}:kept")


def test_the_session_stack_runs_on_free_ports_in_the_temp_dir(stack_endpoints, tmp_path_factory, settings):
    assert str(settings.home).startswith(str(tmp_path_factory.getbasetemp()))
    if stack_endpoints.stack is not None:  # the local stack launcher (servers you name are yours)
        cfg = stack_endpoints.stack.config
        assert str(cfg.stack_dir).startswith(str(tmp_path_factory.getbasetemp()))
        assert not {cfg.kafka_port, cfg.kafka_controller_port, cfg.redis_port} & {19092, 19093, 16379, 29092, 29093, 26379}
