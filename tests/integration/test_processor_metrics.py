"""A processor's Prometheus metrics on `--metrics-port`, scraped over HTTP while it runs: events
applied, DLQ records, batch write latency, consumer lag."""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest
import redis

from deploy.local import free_ports
from pipelines.produce import produce_raw
from tests.builders import event_bytes
from tests.integration.procs import finish, spawn_processor, wait_for

pytestmark = pytest.mark.integration


def _value(text: str, name: str, processor: str) -> float:
    m = re.search(rf'^{name}\{{processor="{processor}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_processor_metrics_are_served_on_the_metrics_port(settings):
    good = [(f"u{k % 7}", event_bytes(k, user=f"u{k % 7}")) for k in range(200)]
    bad = [("u1", b"not json"), ("u2", b"\xff\xfe"), ("u3", b'{"event_id": "x"}')]
    produce_raw(good[:100] + bad + good[100:], settings)
    port = free_ports(1)[0]
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    key = f"{settings.redis_prefix}:offsets:popularity:{settings.events_topic}"
    proc = spawn_processor(settings, "popularity", "--metrics-port", str(port))
    try:
        wait_for(lambda: sum(int(v) for v in r.hgetall(key).values()), len(good) + len(bad), proc)
        text = ""
        for _ in range(300):  # the counters move right after the state write, lag and freshness after the commit
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if _value(text, "recstream_processor_events_total", "popularity") == len(good) and \
                    "recstream_processor_consumer_lag" in text and "recstream_processor_freshness_seconds_bucket" in text:
                break
            time.sleep(0.1)
        assert _value(text, "recstream_processor_events_total", "popularity") == len(good)
        assert _value(text, "recstream_processor_dlq_total", "popularity") == len(bad)
        assert _value(text, "recstream_processor_batch_write_seconds_count", "popularity") >= 1
        assert "recstream_processor_consumer_lag" in text and "recstream_processor_freshness_seconds_bucket" in text
        proc.send_signal(signal.SIGTERM)  # a clean stop
        assert "popularity: applied 200 events, 3 to the DLQ" in finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
