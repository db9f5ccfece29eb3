"""The walking skeleton through the real parts: Kafka -> processor -> Redis (serving: test_serving.py)."""

from __future__ import annotations

import pytest
import redis

from pipelines.data.movielens import ml100k_events
from pipelines.produce import produce_events, produce_raw
from pipelines.stream import PopularityHandler, ProcessorConfig, StreamProcessor
from recstream.events import Event
from tests.builders import TS, dlq_original, event
from tests.integration.kafka_utils import read_json
from tests.integration.procs import running, wait_until

pytestmark = pytest.mark.integration


def _ev(i: int, user: str, item: str, typ: str = "click") -> Event:
    return event(i, user=user, item=item, typ=typ)


def _run_until(proc: StreamProcessor, handler, settings, n_records: int, timeout_s: float = 60) -> None:
    """Run the processor in a thread until its stored offsets cover n_records."""
    with running({"p": proc}):
        wait_until(lambda: sum(handler.stored_offsets(settings.events_topic).values()) >= n_records,
                   "processor caught up", timeout_s)


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
    # the original bytes come back exactly: as text when UTF-8, base64 otherwise
    assert sorted(dlq_original(d) for d in dlq) == sorted(bad)
    assert [d["original_encoding"] for d in dlq if dlq_original(d) == b"\xff\xfe"] == ["base64"]
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
