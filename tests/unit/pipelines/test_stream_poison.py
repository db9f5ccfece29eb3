"""Issue 9, defect 1: no record stops a processor. Whatever decoding raises, the record goes to the
DLQ with a reason and its original bytes, the good events around it apply, and the offsets move on.
In-memory stand-ins for Kafka and the state (no servers)."""

from __future__ import annotations

import json

import pytest

import pipelines.stream.base as base
from pipelines.stream.source import Record
from recstream.errors import StackError
from tests.builders import GOOD, dlq_original, event_bytes
from tests.stream_fakes import FakeProducer, FakeSource, fake_processor

HOSTILE = {
    "deep nesting": b"[" * 100_000,
    "deep objects": b'{"a":' * 50_000,
    "huge integer": json.dumps(GOOD)[:-1].encode() + b', "value": 1' + b"0" * 5000 + b"}",
    "invalid UTF-8": b'{"event_id": "e", "user_id": "\xff\xfe", "item_id": "i", "type": "click", "ts": 1700000000000}',
    "NUL in user_id": json.dumps({**GOOD, "user_id": "u\x00"}).encode(),
    "blank user_id": json.dumps({**GOOD, "user_id": "   "}).encode(),
    "lone surrogate": json.dumps(GOOD)[:-1].encode() + b', "context": {"a": "\\ud800"}}',
    "oversize": b'{"pad": "' + b"x" * 1_000_000 + b'"}',
    "tombstone": None,
    # issue 20
    "user_id twice": json.dumps(GOOD)[:-1].encode() + b', "user_id": "other"}',
    "right-to-left override in user_id": json.dumps({**GOOD, "user_id": "u\u202e2"}).encode(),
    "huge hostile context key": json.dumps({**GOOD, "context": {"\u202e" + "k" * 1000: "x"}}).encode(),
}


def _ev(i: int) -> bytes:
    return event_bytes(i, item=f"i{i}")


def _proc(batches, producer=None):
    return fake_processor(batches, producer=producer, source=FakeSource(batches, partitions=(0,), allow_seek=False))


def test_hostile_records_go_to_the_dlq_and_every_good_one_applies():
    records, offset = [], 0
    for n, raw in enumerate(HOSTILE.values()):  # good, hostile, good, hostile, ..., good
        records += [Record(b"u1", _ev(n), offset, 0), Record(b"u1", raw, offset + 1, 0)]
        offset += 2
    records.append(Record(b"u1", _ev(99), offset, 0))
    p = _proc([{0: records}])
    p.step()
    assert p.flush() == len(records)

    assert p.handler.items == [f"i{n}" for n in range(len(HOSTILE))] + ["i99"]
    assert p.consumer.commits == [{0: len(records)}]
    assert p.dlq_total == len(HOSTILE)
    by_offset = {d["source"]["offset"]: d for _, _, d in p.producer.sent}
    assert sorted(by_offset) == list(range(1, 2 * len(HOSTILE), 2))
    for (kind, raw), off in zip(HOSTILE.items(), range(1, 2 * len(HOSTILE), 2)):
        d = by_offset[off]
        assert d["error"], kind
        if kind == "oversize":  # cut to fit the DLQ's record size, with the full length and hash
            assert d["original_truncated"] and d["original_bytes"] == len(raw)
            assert raw.startswith(dlq_original(d))
        else:
            assert dlq_original(d) == (raw or b""), kind
    assert "user_id: must not contain control characters" in by_offset[9]["error"]
    errors = {kind: by_offset[off]["error"] for kind, off in zip(HOSTILE, range(1, 2 * len(HOSTILE), 2))}
    assert 'user_id: duplicate key "user_id"' in errors["user_id twice"]
    assert "user_id: must not contain control characters" in errors["right-to-left override in user_id"]
    assert "k" * 65 not in errors["huge hostile context key"] and len(errors["huge hostile context key"]) < 300


def test_any_exception_from_the_decoder_is_a_dlq_record_not_a_dead_processor(monkeypatch):
    real = base.parse_event

    def flaky(raw):
        if raw == b"boom":
            raise RecursionError("maximum recursion depth exceeded")
        if raw == b"bug":
            raise KeyError("a decoder bug")
        if raw == b"loud":
            raise ValueError("\u202e" + "x" * 100_000 + "\ud800")
        return real(raw)

    monkeypatch.setattr(base, "parse_event", flaky)
    p = _proc([{0: [Record(b"u", _ev(0), 0, 0), Record(b"u", b"boom", 1, 0), Record(b"u", b"bug", 2, 0),
                    Record(b"u", b"loud", 3, 0), Record(b"u", _ev(4), 4, 0)]}])
    p.step()
    assert p.flush() == 5
    assert p.handler.items == ["i0", "i4"]
    errors = [d["error"] for _, _, d in p.producer.sent]
    assert errors == ["decoder failed: RecursionError: maximum recursion depth exceeded",
                      "decoder failed: KeyError: 'a decoder bug'",
                      'decoder failed: ValueError: "\\u202e' + "x" * 63 + '"...']  # escaped, 64 characters


def test_failed_dlq_writes_are_retried_before_the_batch_moves_on():
    p = _proc([{0: [Record(b"u", b"junk", 0, 0), Record(b"u", _ev(1), 1, 0)]}], FakeProducer(fail_first=2))
    p.step()
    assert p.flush() == 2
    assert p.producer.attempts == 3 and len(p.producer.sent) == 1  # failed twice, written once
    assert p.handler.items == ["i1"]


def test_a_processor_stopped_while_the_dlq_is_down_leaves_the_offsets_behind():
    p = _proc([{0: [Record(b"u", b"junk", 0, 0), Record(b"u", _ev(1), 1, 0)]}], FakeProducer(fail_first=10**9))
    p.stop()
    with pytest.raises(StackError, match="DLQ records unwritten"):
        p.step()
    assert p.handler.items == [] and p.consumer.commits == []


def test_a_huge_key_is_not_copied_to_the_dlq():
    p = _proc([{0: [Record(b"k" * 2_000_000, b"junk", 0, 0)]}])
    p.step()
    p.flush()
    [(_, key, d)] = p.producer.sent
    assert key is None and d["original"] == "junk"


def test_partitioned_layout_sends_a_record_keyed_to_another_partition_to_the_dlq():
    """With the partitioned Redis layout a user's state lives under the partition the producers'
    murmur2 partitioner picks; an event found on another partition would be stored where no reader
    looks, so it goes to the DLQ with a reason naming both partitions."""
    from recstream.partitioning import partition_for
    from recstream.settings import Settings
    from tests.stream_fakes import MemoryHandler
    from pipelines.stream.base import ProcessorConfig, StreamProcessor

    home = next(u for u in (f"u{i}" for i in range(100)) if partition_for(u, 2) == 0)
    stray = next(u for u in (f"u{i}" for i in range(100)) if partition_for(u, 2) == 1)
    records = [Record(home.encode(), event_bytes(0, user=home), 0, 0), Record(stray.encode(), event_bytes(1, user=stray), 1, 0)]
    p = StreamProcessor(MemoryHandler(), ProcessorConfig(name="mem", retry_backoff_ms=1),
                        Settings(redis_key_layout="partitioned", topic_partitions=2))
    p.consumer, p.producer = FakeSource([{0: records}], partitions=(0,), allow_seek=False), FakeProducer()
    p.step()
    assert p.flush() == 2
    assert p.handler.items == ["i0"] and p.consumer.commits == [{0: 2}]
    (_, key, dead), = p.producer.sent
    assert key == stray.encode() and dead["source"]["offset"] == 1
    assert "user routes to partition 1" in dead["error"] and "record is on partition 0" in dead["error"]
