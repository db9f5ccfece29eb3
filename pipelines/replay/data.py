"""The replay tool's input: logged impressions and the events that followed, from Kafka or parquet,
and the attribution of outcomes to slots.

An event is an outcome of impression i at slot p when it is one of `reward_types`, it belongs to
the impression's user, it happens within `window_s` after the impression, and either it names
the impression (`request_id`, and `position` when given) or, without a request id, its item is
the one shown at p (then the latest such impression of that user before the event takes it).
A slot's reward is 1 when at least one outcome is attributed to it, else 0 (clicks per slate).
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from recstream.events import Event, EventType, ImpressionLog, InvalidEvent, parse_event

log = logging.getLogger(__name__)

DEFAULT_REWARD_TYPES = ("click", "like", "purchase")


@dataclass
class ReplayLog:
    impressions: list[ImpressionLog]
    events: list[Event]
    skipped: dict[str, int] = field(default_factory=dict)  # why records were left out, how many

    def in_range(self, since_ms: int | None, until_ms: int | None) -> "ReplayLog":
        keep = [i for i in self.impressions if (since_ms is None or i.ts >= since_ms) and (until_ms is None or i.ts < until_ms)]
        return ReplayLog(keep, self.events, dict(self.skipped))


def parse_records(impression_values: Iterable[bytes], event_values: Iterable[bytes]) -> ReplayLog:
    """Decode raw Kafka values; undecodable records are counted, never fatal (the events topic may
    hold what its DLQ also holds)."""
    skipped: dict[str, int] = defaultdict(int)
    imps = []
    for raw in impression_values:
        try:
            imps.append(ImpressionLog.model_validate_json(raw))
        except ValidationError:
            skipped["bad_impression"] += 1
    evs = []
    for raw in event_values:
        try:
            evs.append(parse_event(raw))
        except InvalidEvent:
            skipped["bad_event"] += 1
    imps.sort(key=lambda i: (i.ts, i.request_id))
    evs.sort(key=lambda e: (e.ts, e.event_id))
    return ReplayLog(imps, evs, dict(skipped))


def read_kafka(bootstrap: str, impressions_topic: str, events_topic: str, since_ms: int | None = None,
               until_ms: int | None = None, window_s: float = 3600.0, idle_ms: int = 3000, progress=None) -> ReplayLog:
    """Impressions with since_ms <= ts < until_ms and the events up to until_ms + window_s, read
    by offsets looked up from the timestamps (the topics' record timestamps are produce times;
    the filter on the records' own `ts` is what decides)."""
    imps = _read_topic(bootstrap, impressions_topic, since_ms, until_ms, idle_ms, progress)
    ev_until = None if until_ms is None else until_ms + int(window_s * 1000)
    evs = _read_topic(bootstrap, events_topic, since_ms, ev_until, idle_ms, progress)
    return parse_records(imps, evs).in_range(since_ms, until_ms)


def _read_topic(bootstrap: str, topic: str, since_ms: int | None, until_ms: int | None, idle_ms: int,
                progress=None) -> list[bytes]:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"recstream-replay-{topic}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True, "log_level": 3})
    try:
        meta = c.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic!r} not found at {bootstrap}")
        parts = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        if since_ms is not None:  # records produced before the range's start hold nothing for it
            starts = c.offsets_for_times([TopicPartition(topic, p.partition, max(0, since_ms - 60_000)) for p in parts],
                                         timeout=10)
            parts = [TopicPartition(topic, s.partition, s.offset if s.offset >= 0 else ends[s.partition]) for s in starts]
        else:
            parts = [TopicPartition(topic, p.partition, 0) for p in parts]
        todo = {p.partition for p in parts if p.offset < ends[p.partition]}
        out: list[bytes] = []
        if not todo:
            return out
        c.assign(parts)
        bar = progress(total=sum(ends[p.partition] - max(p.offset, 0) for p in parts), desc=topic) if progress else None
        while todo:
            msgs = c.consume(num_messages=5000, timeout=idle_ms / 1000)
            if not msgs:
                log.warning("replay: %s idle for %d ms before its end offsets; reading what arrived", topic, idle_ms)
                break
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(m.partition())
                    continue
                if m.offset() >= ends[m.partition()]:
                    todo.discard(m.partition())
                    continue
                out.append(m.value())
                if m.offset() + 1 >= ends[m.partition()]:
                    todo.discard(m.partition())
            if bar is not None:
                bar.update(len(msgs))
        if bar is not None:
            bar.close()
        return out
    finally:
        c.close()


def write_parquet(path: str | Path, rlog: ReplayLog) -> None:
    """Both record kinds in one file: kind, ts, json (the record as logged)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("impression", i.ts, i.model_dump_json()) for i in rlog.impressions] + \
           [("event", e.ts, e.model_dump_json(exclude_none=True)) for e in rlog.events]
    table = pa.table({"kind": [r[0] for r in rows], "ts": [r[1] for r in rows], "json": [r[2] for r in rows]})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def read_parquet(path: str | Path) -> ReplayLog:
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    kinds, blobs = t["kind"], t["json"]
    return parse_records((b for k, b in zip(kinds, blobs) if k == "impression"),
                         (b for k, b in zip(kinds, blobs) if k == "event"))


def attribute(rlog: ReplayLog, window_s: float = 3600.0,
              reward_types: Iterable[str] = DEFAULT_REWARD_TYPES) -> dict[tuple[str, int], float]:
    """(request_id, position) -> 1.0 for every slot with an attributed outcome (see module doc)."""
    types = {EventType(t) for t in reward_types}
    window_ms = int(window_s * 1000)
    by_id = {i.request_id: i for i in rlog.impressions}
    # user -> item -> sorted (ts, request_id, position) of the slots that showed it
    shown: dict[str, dict[str, list[tuple[int, str, int]]]] = defaultdict(lambda: defaultdict(list))
    for i in rlog.impressions:
        for s in i.slate:
            shown[i.user_id][s.item_id].append((i.ts, i.request_id, s.position))
    out: dict[tuple[str, int], float] = {}
    for e in rlog.events:
        if e.type not in types:
            continue
        if e.request_id is not None:
            imp = by_id.get(e.request_id)
            if imp is None or imp.user_id != e.user_id or not imp.ts <= e.ts <= imp.ts + window_ms:
                continue
            for s in imp.slate:
                if s.item_id == e.item_id and (e.position is None or e.position == s.position):
                    out[(imp.request_id, s.position)] = 1.0
            continue
        slots = shown.get(e.user_id, {}).get(e.item_id)
        if not slots:
            continue
        j = bisect.bisect_right(slots, (e.ts, "\uffff", 1 << 30)) - 1  # the latest showing at or before the event
        if j >= 0 and e.ts - slots[j][0] <= window_ms:
            out[(slots[j][1], slots[j][2])] = 1.0
    return out


def interactions_after(rlog: ReplayLog, window_s: float = 3600.0,
                       reward_types: Iterable[str] = DEFAULT_REWARD_TYPES) -> dict[str, set[str]]:
    """request_id -> items the user engaged with (any of reward_types) within window_s after the
    impression, shown or not: the relevance set of the ranking metrics in traffic replay."""
    types = {EventType(t) for t in reward_types}
    window_ms = int(window_s * 1000)
    per_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in rlog.events:
        if e.type in types:
            per_user[e.user_id].append((e.ts, e.item_id))
    for evs in per_user.values():
        evs.sort()
    out = {}
    for i in rlog.impressions:
        evs = per_user.get(i.user_id, [])
        lo = bisect.bisect_left(evs, (i.ts, ""))
        hi = bisect.bisect_right(evs, (i.ts + window_ms, "\uffff"))
        out[i.request_id] = {item for _, item in evs[lo:hi]}
    return out

