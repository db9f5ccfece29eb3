"""The shared consumer loop with in-memory stand-ins for the Kafka consumer/producer and the state."""

from __future__ import annotations

import pytest

from pipelines.stream import base
from pipelines.stream.source import Record
from tests.builders import event_bytes
from tests.stream_fakes import MemoryHandler, fake_processor

TOPIC = "recstream.events"


def _ev(i: int) -> bytes:
    return event_bytes(i, user="u")


def Rec(key, value, offset, ts):
    return Record(key.encode(), value, offset, ts)


def _proc(handler, batches, **config):
    return fake_processor(batches, handler=handler, **config)


def test_bad_records_go_to_dlq_and_good_ones_apply_then_commit():
    tp = 0
    h = MemoryHandler()
    p = _proc(h, [{tp: [Rec("u", _ev(0), 0, 0), Rec("u", b"garbage", 1, 0), Rec("u", _ev(2), 2, 0)]}])
    assert p.step() == 0  # parsed and handed to the writer thread
    assert p.flush() == 3
    assert h.items == ["i0", "i2"] and h.offsets == {0: 3}
    [(topic, _, dlq)] = p.producer.sent
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


def _metric(name: str, processor: str = "mem") -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"processor": processor}) or 0.0


def test_applied_dlq_and_skipped_records_are_counted_in_the_metrics():
    before = {n: _metric(n) for n in ("recstream_processor_events_total", "recstream_processor_dlq_total")}
    h = MemoryHandler()
    p = _proc(h, [{0: [Rec("u", _ev(0), 0, 0), Rec("u", b"garbage", 1, 0), Rec("u", _ev(2), 2, 0)]},
                  {0: [Rec("u", _ev(2), 2, 0), Rec("u", _ev(3), 3, 0)]}])  # 2 redelivered
    p.step(), p.step()
    p.flush()
    assert _metric("recstream_processor_events_total") - before["recstream_processor_events_total"] == 3
    assert _metric("recstream_processor_dlq_total") - before["recstream_processor_dlq_total"] == 1
    assert h.skipped == 1 and p.applied_total == 3 and p.dlq_total == 1


def test_a_state_rolled_back_while_no_records_arrive_is_rewound():
    """Redis restored from an older snapshot while the topic is quiet: no batch will find it, so the
    idle check compares the stored offsets with what this process applied and seeks back."""
    h = MemoryHandler()
    p = _proc(h, [{0: [Rec("u", _ev(k), k, 0) for k in range(4)], 1: [Rec("u", _ev(10), 0, 0)]}, {}, {}, {}],
              idle_state_check_s=1e-6)
    before = _metric("recstream_processor_rewinds_total")
    p.step(), p.step()  # applied and committed
    p.step()  # idle, state consistent: nothing to do
    assert p.consumer.seeks == [] and p.rewinds_total == 0
    h.offsets, h.items = {0: 1, 1: 1}, h.items[:1] + h.items[4:]  # the snapshot knew partition 0 up to offset 1
    p.step()
    assert p.consumer.seeks == [(0, 1)] and p.rewinds_total == 1
    assert _metric("recstream_processor_rewinds_total") - before == 1
    p.consumer.batches = [{0: [Rec("u", _ev(k), k, 0) for k in range(1, 4)]}, {}, {}]
    p.step(), p.step(), p.step()
    assert h.items == ["i0", "i10", "i1", "i2", "i3"] and p.consumer.seeks == [(0, 1)]


def test_a_partition_whose_whole_state_vanished_is_read_again_from_where_this_process_began_it():
    """A replica promoted before its master's first writes of partition 1 reached it: nothing of
    partition 1 is stored any more, not even its offsets. The idle check must not take that for a
    fresh partition (the records it applied would be lost): it reads the partition again from
    the offset this process began its state at, and a second rewind does not follow."""
    h = MemoryHandler()
    p = _proc(h, [{0: [Rec("u", _ev(k), k, 0) for k in range(2)], 1: [Rec("u", _ev(10 + k), 40 + k, 0) for k in range(3)]},
                  {}, {}], idle_state_check_s=1e-6)
    p.step(), p.step()
    assert h.offsets == {0: 2, 1: 43}
    h.offsets, h.items = {0: 2}, h.items[:2]  # partition 1's state and offsets gone together
    p.step()
    assert p.consumer.seeks == [(1, 40)] and p.rewinds_total == 1
    p.consumer.batches = [{1: [Rec("u", _ev(10 + k), 40 + k, 0) for k in range(3)]}, {}, {}, {}]
    p.step(), p.step(), p.step(), p.step()
    assert h.items == ["i0", "i1", "i10", "i11", "i12"] and h.offsets == {0: 2, 1: 43}
    assert p.consumer.seeks == [(1, 40)] and p.rewinds_total == 1


def test_a_batch_that_finds_its_partition_state_vanished_is_dropped_and_read_again():
    """The same found by the next batch of the partition rather than the idle check."""
    h = MemoryHandler()
    p = _proc(h, [{1: [Rec("u", _ev(10), 40, 0)]}, {1: [Rec("u", _ev(11), 41, 0)]}, {}])
    p.step()
    assert p.step() == 1  # 40 applied and committed; 41 handed to the writer thread...
    h.offsets, h.items = {}, []  # ...after partition 1's state vanished
    assert p.flush() is None and p.consumer.seeks == [(1, 40)]
    p.consumer.batches = [{1: [Rec("u", _ev(10), 40, 0), Rec("u", _ev(11), 41, 0)]}, {}]
    p.step(), p.step()
    assert h.items == ["i10", "i11"] and h.offsets == {1: 42} and p.rewinds_total == 1


def test_a_quiet_processor_does_not_rewind_partitions_it_never_applied():
    h = MemoryHandler()
    h.offsets = {0: 7}  # written by an earlier run; this one has applied nothing yet
    p = _proc(h, [{}, {}], idle_state_check_s=1e-6)
    p.step(), p.step()
    assert p.consumer.seeks == [] and p.rewinds_total == 0


def test_exit_after_writes_stops_between_the_state_write_and_the_commit(monkeypatch):
    """The crash-window test hook: the state holds the batch, Kafka never hears of it."""
    def exit_now(code):
        raise SystemExit(code)

    monkeypatch.setattr(base.os, "_exit", exit_now)
    h = MemoryHandler()
    p = _proc(h, [{0: [Rec("u", _ev(0), 0, 0)]}, {0: [Rec("u", _ev(1), 1, 0)]}, {}], exit_after_writes=2)
    p.step(), p.step()
    with pytest.raises(SystemExit) as e:
        p.step()
    assert e.value.code == base.EXIT_AFTER_WRITES_RC
    assert h.offsets == {0: 2} and p.consumer.commits == [{0: 1}]


def test_records_the_stored_offsets_skip_on_assignment_are_counted():
    p = _proc(MemoryHandler(), [])
    before = _metric("recstream_processor_resume_skipped_total")
    p._resumed({0: 120, 1: 0})
    assert p.resume_skipped_total == 120
    assert _metric("recstream_processor_resume_skipped_total") - before == 120


def test_the_kafka_source_measures_the_gap_between_committed_and_stored_offsets():
    from confluent_kafka import TopicPartition

    from pipelines.stream.source import KafkaSource

    class Consumer:  # committed: partition 0 at 40, partition 1 never (the log starts at 5)
        def committed(self, tps, timeout):
            return [TopicPartition(tp.topic, tp.partition, 40 if tp.partition == 0 else -1001) for tp in tps]

        def get_watermark_offsets(self, tp, timeout, cached):
            return (5, 500)

    src = object.__new__(KafkaSource)
    src.topic = "t"
    assert src._past_committed(Consumer(), {0: 100, 1: 5}) == {0: 60, 1: 0}
