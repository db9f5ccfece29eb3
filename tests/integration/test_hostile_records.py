"""Issue 9, defect 1 on the real stack: hostile records among good ones. b"[" * 100000 used to
raise RecursionError out of every processor, at the same offset after each restart. Now every
hostile record reaches the DLQ with a reason and its original bytes, every good event around
them is applied, and a restarted processor goes on from past them."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import redis

from pipelines.produce import produce_raw
from pipelines.stream import ProcessorConfig, StreamProcessor
from recstream.events import Event
from tests.builders import GOOD, dlq_original
from tests.integration.kafka_utils import read_json
from tests.integration.procs import all_handlers, run_until_idle

pytestmark = pytest.mark.integration

HEAD = json.dumps(GOOD)[:-1].encode()  # a valid event without its closing brace

# kind -> records of that kind
HOSTILE: dict[str, list[bytes | None]] = {
    "deep nesting": [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 1_000 + b"]" * 1_000, b'{"context":' * 20_000],
    "huge numbers": [HEAD + b', "value": 1' + b"0" * 5_000 + b"}", HEAD + b', "position": ' + b"9" * 100_000 + b"}",
                     json.dumps({k: v for k, v in GOOD.items() if k != "ts"})[:-1].encode() + b', "ts": 1e400}',
                     HEAD + b', "value": 1e999}'],
    "invalid UTF-8": [b"\xff\xfe\xfd", HEAD.replace(b'"u1"', b'"u\xc3"') + b"}", HEAD + b', "context": {"a": "\xed\xa0\x80"}}',
                      b"\xef\xbb\xbf" + HEAD + b"}"],
    "control characters in ids": [json.dumps({**GOOD, "user_id": "u\x00"}).encode(),
                                  json.dumps({**GOOD, "item_id": "i\n1"}).encode(),
                                  json.dumps({**GOOD, "event_id": "e\x1b[31m"}).encode()],
    "blank or oversize ids": [json.dumps({**GOOD, "user_id": "   "}).encode(), json.dumps({**GOOD, "item_id": "x" * 129}).encode()],
    "lone surrogate": [HEAD + b', "context": {"a": "\\ud800"}}'],
    # issue 20: lookalike ids, a key given twice (the last one used to win), a huge hostile key
    "lookalike ids": [json.dumps({**GOOD, "user_id": "u\u202e2"}).encode(), json.dumps({**GOOD, "user_id": "\u200b"}).encode(),
                      json.dumps({**GOOD, "item_id": "\ufeffi1"}).encode(), json.dumps({**GOOD, "item_id": "i\u0378"}).encode()],
    "duplicate keys": [HEAD + b', "user_id": "other"}', HEAD + b', "context": {"a": "1", "a": "2"}}'],
    "huge hostile context key": [json.dumps({**GOOD, "context": {"\u202e" + "k" * 1000: "x"}}).encode()],
    "lax types": [json.dumps({**GOOD, "ts": True}).encode(), json.dumps({**GOOD, "ts": str(GOOD["ts"])}).encode(),
                  json.dumps({**GOOD, "value": "2.5"}).encode()],
    "oversize record": [b'{"pad": "' + b"x" * 300_000 + b'"}', b"[" * 950_000],
    "random bytes": [os.urandom(n) for n in (1, 17, 256, 4096)],
    "tombstone": [None],
}


def test_hostile_records_reach_the_dlq_and_every_good_event_is_applied(settings):
    hostile = [(kind, raw) for kind, raws in HOSTILE.items() for raw in raws]
    goods = [Event(**{**GOOD, "event_id": f"g{n}", "item_id": f"i{n}", "ts": GOOD["ts"] + n}).to_bytes()
             for n in range(len(hostile) + 1)]
    records, kind_at = [], {}
    for n, (kind, raw) in enumerate(hostile):  # good, hostile, good, hostile, ..., good: one partition (key u1)
        records += [("u1", goods[n]), ("u1", raw)]
        kind_at[2 * n + 1] = (kind, raw)
    records.append(("u1", goods[-1]))
    produce_raw(records, settings)

    procs = {name: StreamProcessor(h, ProcessorConfig(name=name), settings) for name, h in all_handlers(settings).items()}
    run_until_idle(procs)
    for name, p in procs.items():
        assert p.applied_total == len(goods), name  # not one good event lost
        assert p.dlq_total == len(hostile), name

    dlq = read_json(settings.kafka_bootstrap, settings.dlq_topic, 3 * len(hostile), timeout_s=60)
    assert len(dlq) == 3 * len(hostile)
    summary: dict[str, list[str]] = {}
    for d in dlq:
        kind, raw = kind_at[d["source"]["offset"]]
        assert d["error"], kind
        assert len(d["error"]) <= 1000 and "k" * 65 not in d["error"], kind  # input quoted escaped, <= 64 characters
        assert d["source"]["topic"] == settings.events_topic
        raw = raw or b""
        if d.get("original_truncated"):
            assert d["original_bytes"] == len(raw) and d["original_sha256"] == hashlib.sha256(raw).hexdigest()
            assert raw.startswith(dlq_original(d))
        else:
            assert dlq_original(d) == raw, kind
        if d["processor"] == "popularity":
            summary.setdefault(kind, []).append(d["error"][:90])
    assert {p: sorted(d["source"]["offset"] for d in dlq if d["processor"] == p) for p in procs} == \
        {p: sorted(kind_at) for p in procs}
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert r.scard(f"{settings.redis_prefix}:seen:u1") == len(goods)

    # A restart starts past the hostile records: nothing dies, nothing new is applied or dead-lettered.
    again = {name: StreamProcessor(h, ProcessorConfig(name=name), settings) for name, h in all_handlers(settings).items()}
    run_until_idle(again)
    assert all(p.applied_total == 0 and p.dlq_total == 0 for p in again.values())

    print("\nhostile records -> DLQ reason (popularity processor)")
    for kind, reasons in summary.items():
        print(f"  {kind} ({len(reasons)}): " + " | ".join(reasons))
