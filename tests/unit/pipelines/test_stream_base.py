"""The shared consumer loop with in-memory stand-ins for the Kafka consumer/producer and the state."""

from __future__ import annotations

import json
from pipelines.stream.base import ProcessorConfig, SourcedEvent, StreamProcessor
from pipelines.stream.source import Record
from recstream.events import Event
from recstream.settings import Settings

TOPIC = "recstream.events"


def _ev(i: int) -> bytes:
    return Event(event_id=f"e{i}", user_id="u", item_id=f"i{i}", type="click", ts=1_700_000_000_000 + i).to_bytes()


def Rec(key, value, offset, ts):
    return Record(key.encode(), value, offset, ts)


class FakeSource:
    """The pipelines.stream.source.Source interface over a list of polls."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.commits, self.seeks = [], []

    def poll(self, max_records, timeout_s):
        return self.batches.pop(0) if self.batches else {}

    def commit(self, next_offsets):
        self.commits.append(dict(next_offsets))

    def assignment(self):
        return [0, 1]

    def seek(self, partition, offset):
        self.seeks.append((partition, offset))


class FakeProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, json.loads(value)))

    def flush(self):
        pass


class MemoryHandler:
    """Offsets stored with the state, like the Redis handlers."""

    name = "mem"

    def __init__(self):
        self.items: list[str] = []
        self.offsets: dict[int, int] = {}

    def stored_offsets(self, topic):
        return dict(self.offsets)

    def apply(self, topic, events: list[SourcedEvent], next_offsets):
        fresh = [e for e in events if e.offset >= self.offsets.get(e.partition, 0)]
        self.items += [e.event.item_id for e in fresh]
        self.offsets.update({p: max(o, self.offsets.get(p, 0)) for p, o in next_offsets.items()})
        return len(fresh)


def _proc(handler, batches):
    p = StreamProcessor(handler, ProcessorConfig(name="mem"), Settings())
    p.consumer, p.producer = FakeSource(batches), FakeProducer()
    return p


def test_bad_records_go_to_dlq_and_good_ones_apply_then_commit():
    tp = 0
    h = MemoryHandler()
    p = _proc(h, [{tp: [Rec("u", _ev(0), 0, 0), Rec("u", b"garbage", 1, 0), Rec("u", _ev(2), 2, 0)]}])
    assert p.step() == 0  # parsed and handed to the writer thread
    assert p.flush() == 3
    assert h.items == ["i0", "i2"] and h.offsets == {0: 3}
    [(topic, dlq)] = p.producer.sent
    assert topic == "recstream.events.dlq" and dlq["source"] == {"topic": TOPIC, "partition": 0, "offset": 1}
    assert dlq["original"] == "garbage" and dlq["processor"] == "mem"
    assert p.consumer.commits == [{0: 3}]


def test_redelivered_records_are_skipped():
    tp = 0
    h = MemoryHandler()
    p = _proc(h, [{tp: [Rec("u", _ev(0), 0, 0), Rec("u", _ev(1), 1, 0)]},
                  {tp: [Rec("u", _ev(1), 1, 0), Rec("u", _ev(2), 2, 0)]}])  # a crash before commit redelivers 1
    p.step()
    assert p.step() == 2  # the first batch, committed while the second was parsed
    p.flush()
    assert h.items == ["i0", "i1", "i2"]


def test_state_restored_older_than_the_batch_rewinds_instead_of_skipping_ahead():
    tp = 0
    h = MemoryHandler()
    h.offsets = {0: 5}  # Redis came back from its AOF knowing offsets < 5 only
    p = _proc(h, [{tp: [Rec("u", _ev(8), 8, 0), Rec("u", _ev(9), 9, 0)]}])
    p.step()
    assert p.flush() is None
    assert h.items == [] and p.consumer.seeks == [(0, 5)] and p.consumer.commits == []


def test_a_batch_read_while_the_state_was_found_rewound_is_dropped_too():
    tp = 0
    h = MemoryHandler()
    h.offsets = {0: 5}
    p = _proc(h, [{tp: [Rec("u", _ev(8), 8, 0)]}, {tp: [Rec("u", _ev(9), 9, 0)]}, {}])
    p.step()  # batch 8 goes to the writer thread, which finds the state older than it
    assert p.step() == 0  # batch 9 was fetched before the seek back: not applied, not committed
    assert p.step() == 0 and p.flush() == 0
    assert h.items == [] and p.consumer.seeks == [(0, 5)] and p.consumer.commits == []


def test_a_rewind_rereads_dropped_records_of_partitions_the_state_has_no_offset_for():
    h = MemoryHandler()
    h.offsets = {0: 5}  # partition 1 has never been stored
    p = _proc(h, [{0: [Rec("u", _ev(8), 8, 0)], 1: [Rec("u", _ev(20), 3, 0)]}, {1: [Rec("u", _ev(21), 4, 0)]}, {}])
    p.step()
    assert p.step() == 0
    assert sorted(p.consumer.seeks) == [(0, 5), (1, 3)]
