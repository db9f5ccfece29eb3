"""The walking skeleton through the real parts: Kafka -> processor -> Redis -> Ray Serve -> Kafka."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from pipelines.data.movielens import ml100k_events
from pipelines.produce import produce_events, produce_raw
from pipelines.stream import PopularityHandler, ProcessorConfig, StreamProcessor
from recstream.events import Event, EventType
from services.config import ServeConfig
from tests.integration.kafka_utils import read_json

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000


def _ev(i: int, user: str, item: str, typ: str = "click") -> Event:
    return Event(event_id=f"e{i}", user_id=user, item_id=item, type=EventType(typ), ts=TS + i)


def _run_until(proc: StreamProcessor, handler, settings, n_records: int, timeout_s: float = 60) -> None:
    """Run the processor in a thread until its stored offsets cover n_records."""
    t = threading.Thread(target=proc.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(handler.stored_offsets(settings.events_topic).values()) >= n_records:
            break
        time.sleep(0.2)
    proc.stop()
    t.join(timeout=30)
    assert sum(handler.stored_offsets(settings.events_topic).values()) >= n_records, "processor did not catch up"


def test_events_reach_redis(settings):
    events = list(ml100k_events(limit=2000))
    produce_events(events, settings, progress=False)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    handler = PopularityHandler(r, settings.redis_prefix)
    _run_until(StreamProcessor(handler, ProcessorConfig(name="popularity"), settings), handler, settings, len(events))

    expected_pop: dict[str, float] = {}
    expected_seen: dict[str, set] = {}
    for e in events:
        expected_pop[e.item_id] = expected_pop.get(e.item_id, 0) + 1.0
        expected_seen.setdefault(e.user_id, set()).add(e.item_id)
    pop = dict(r.zrange(f"{settings.redis_prefix}:pop", 0, -1, withscores=True))
    assert pop == expected_pop
    some_user = events[0].user_id
    assert r.smembers(f"{settings.redis_prefix}:seen:{some_user}") == expected_seen[some_user]


def test_malformed_events_go_to_dlq_and_processing_continues(settings):
    good = [_ev(i, "u1", f"i{i}") for i in range(5)]
    bad = [b"not json", b"{\"event_id\": \"x\"}", b"\xff\xfe", b"[1,2]",
           b'{"event_id":"e9","user_id":"u","item_id":"i","type":"click","ts":17}']
    produce_raw([("u1", good[0].to_bytes()), *[("bad", b) for b in bad], *[("u1", g.to_bytes()) for g in good[1:]]], settings)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    handler = PopularityHandler(r, settings.redis_prefix)
    proc = StreamProcessor(handler, ProcessorConfig(name="popularity"), settings)
    _run_until(proc, handler, settings, len(good) + len(bad))

    assert r.scard(f"{settings.redis_prefix}:seen:u1") == 5  # every good event after the bad ones applied
    dlq = read_json(settings.kafka_bootstrap, settings.dlq_topic, len(bad))
    assert len(dlq) == len(bad)
    assert {d["source"]["topic"] for d in dlq} == {settings.events_topic}
    assert sorted(d["original"] for d in dlq if d["original_encoding"] == "utf-8") == sorted(
        b.decode() for b in bad if b != b"\xff\xfe")
    assert any("ts" in d["error"] for d in dlq)  # the reason names the field


def test_redelivered_batch_is_not_applied_twice(settings):
    from pipelines.stream.base import SourcedEvent

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    handler = PopularityHandler(r, settings.redis_prefix)
    batch = [SourcedEvent(_ev(i, "u2", "same-item"), partition=0, offset=i, kafka_ts_ms=TS) for i in range(10)]
    assert handler.apply(settings.events_topic, batch, {0: 10}) == 10
    # A crash after the Redis write but before the Kafka commit redelivers the batch (and a bit more).
    more = batch[5:] + [SourcedEvent(_ev(10, "u2", "same-item"), 0, 10, TS)]
    assert handler.apply(settings.events_topic, more, {0: 11}) == 1
    assert r.zscore(f"{settings.redis_prefix}:pop", "same-item") == 11.0
    assert handler.stored_offsets(settings.events_topic) == {0: 11}


@pytest.fixture
def served(settings, ray_serve):
    """Deploy the app for this test's settings under its own route prefix."""
    from ray import serve

    from services.app import build_app

    name = settings.redis_prefix
    serve.run(build_app(settings, ServeConfig(max_k=50, popular_pool_size=100)), name=name, route_prefix=f"/{name}",
              blocking=False)
    yield f"{ray_serve}/{name}"
    serve.delete(name)


def test_recommend_returns_only_unseen_items_and_logs_the_slate(settings, served):
    # Popularity: item p0 > p1 > ... > p9 (gaps of 2, so alice's own events keep the order); alice saw p0, p2, p4.
    events = [_ev(i * 100 + j, f"crowd{j}", f"p{i}") for i in range(10) for j in range(2 * (10 - i))]
    events += [_ev(5000 + n, "alice", f"p{n}") for n in (0, 2, 4)]
    produce_events(events, settings, progress=False)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    handler = PopularityHandler(r, settings.redis_prefix)
    _run_until(StreamProcessor(handler, ProcessorConfig(name="popularity"), settings), handler, settings, len(events))

    resp = httpx.post(f"{served}/v1/recommend", json={"user_id": "alice", "k": 4}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [it["item_id"] for it in body["items"]] == ["p1", "p3", "p5", "p6"]
    assert body["degraded"] is False and body["variant"] == "A"

    cold = httpx.post(f"{served}/v1/recommend", json={"user_id": "nobody-knows-me", "k": 3}, timeout=30).json()
    assert [it["item_id"] for it in cold["items"]] == ["p0", "p1", "p2"]

    logs = read_json(settings.kafka_bootstrap, settings.impressions_topic, 2)
    by_id = {rec["request_id"]: rec for rec in logs}
    assert body["request_id"] in by_id
    rec = by_id[body["request_id"]]
    assert rec["user_id"] == "alice"
    assert [s["item_id"] for s in rec["slate"]] == ["p1", "p3", "p5", "p6"]
    assert [s["position"] for s in rec["slate"]] == [0, 1, 2, 3]
    assert all(s["propensity"] == 1.0 for s in rec["slate"])


def test_bad_requests_get_422_naming_the_field(settings, served):
    cases = [({"k": 3}, "user_id"), ({"user_id": "a", "k": 0}, "k"), ({"user_id": "a", "k": 51}, "k"),
             ({"user_id": "a", "k": "ten"}, "k"), ({"user_id": "a", "k": 3, "bogus": 1}, "bogus")]
    for payload, field in cases:
        resp = httpx.post(f"{served}/v1/recommend", json=payload, timeout=30)
        assert resp.status_code == 422, (payload, resp.text)
        assert any(field in err["loc"] for err in resp.json()["detail"]), (payload, resp.text)
    assert httpx.get(f"{served}/healthz", timeout=30).json() == {"status": "ok"}
    assert "/v1/recommend" in httpx.get(f"{served}/openapi.json", timeout=30).json()["paths"]


def test_redis_outage_degrades_instead_of_failing(settings, ray_serve):
    from ray import serve

    from services.app import build_app

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    name = settings.redis_prefix + "x"
    serve.run(build_app(broken, ServeConfig()), name=name, route_prefix=f"/{name}", blocking=False)
    try:
        resp = httpx.post(f"{ray_serve}/{name}/v1/recommend", json={"user_id": "u", "k": 5}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["degraded"] is True
    finally:
        serve.delete(name)
