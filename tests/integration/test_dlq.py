"""A corpus of malformed records lands in the DLQ, once per processor, and every processor lives on."""

from __future__ import annotations

import json

import pytest
import redis

from pipelines.produce import produce_raw
from pipelines.stream import ProcessorConfig, StreamProcessor
from recstream.events import Event
from tests.builders import GOOD
from tests.integration.kafka_utils import read_json
from tests.integration.procs import all_handlers, run_until_idle

pytestmark = pytest.mark.integration


CORPUS: list[bytes] = [
    b"", b" ", b"null", b"true", b"42", b'"a string"', b"[]", b"{}", b"{", b"\x00\x01\x02", b"\xff\xfe\xfd",
    b"\xef\xbb\xbf{}",  # BOM then an empty object
    json.dumps({**GOOD, "type": "CLICK"}).encode(),
    json.dumps({**GOOD, "type": None}).encode(),
    json.dumps({**GOOD, "ts": "yesterday"}).encode(),
    json.dumps({**GOOD, "ts": 1_700_000_000}).encode(),  # seconds
    json.dumps({**GOOD, "ts": -1}).encode(),
    json.dumps({**GOOD, "user_id": ""}).encode(),
    json.dumps({**GOOD, "user_id": "x" * 500}).encode(),
    json.dumps({**GOOD, "user_id": 7}).encode(),
    json.dumps({**GOOD, "item_id": ["i1"]}).encode(),
    json.dumps({k: v for k, v in GOOD.items() if k != "event_id"}).encode(),
    json.dumps({**GOOD, "value": "high"}).encode(),
    json.dumps({**GOOD, "position": -3}).encode(),
    json.dumps({**GOOD, "context": {"a": 1}}).encode(),
    json.dumps({**GOOD, "context": {str(i): "x" for i in range(100)}}).encode(),
    json.dumps({**GOOD, "v": 2}).encode(),
    json.dumps({**GOOD, "unexpected": True}).encode(),
    b'{"event_id":"e","user_id":"u1","item_id":"i1","type":"click","ts":1700000000000,"value":NaN}',
    b'{"event_id":"e","user_id":"u1","item_id":"i1","type":"click","ts":1e400}',
]


def test_malformed_corpus_goes_to_dlq_and_processors_live(settings):
    goods = [Event(**{**GOOD, "event_id": f"g{n}", "item_id": f"i{n}", "ts": GOOD["ts"] + n}) for n in range(len(CORPUS))]
    records = []
    for good, bad in zip(goods, CORPUS):  # interleaved: each bad record sits between good ones
        records += [("u1", good.to_bytes()), ("u1", bad)]
    produce_raw(records, settings)

    procs = {name: StreamProcessor(h, ProcessorConfig(name=name), settings) for name, h in all_handlers(settings).items()}
    run_until_idle(procs, timeout_s=180)

    for name, p in procs.items():
        assert p.dlq_total == len(CORPUS), name
        assert p.applied_total == len(goods), name  # every good event around the bad ones applied

    dlq = read_json(settings.kafka_bootstrap, settings.dlq_topic, 3 * len(CORPUS))
    assert len(dlq) == 3 * len(CORPUS)
    by_proc: dict[str, list[dict]] = {}
    for d in dlq:
        by_proc.setdefault(d["processor"], []).append(d)
    assert set(by_proc) == set(procs)
    for name, recs in by_proc.items():
        # every bad record, identified by its source offset (odd offsets: good, bad, good, bad, ...)
        assert sorted(d["source"]["offset"] for d in recs) == list(range(1, 2 * len(CORPUS), 2)), name
        assert all(d["error"] for d in recs)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    assert r.scard(f"{settings.redis_prefix}:seen:u1") == len(goods)
