"""Produce events to Kafka from a dataset (MovieLens-100k or synthetic), with a progress bar."""

from __future__ import annotations

from typing import Iterable

from tqdm import tqdm

from recstream.events import Event
from recstream.kafka_io import make_producer
from recstream.settings import Settings, get_settings


def produce_events(events: Iterable[Event], settings: Settings | None = None, total: int | None = None,
                   progress: bool = True) -> int:
    """Send events keyed by user_id; returns how many were acknowledged (acks=all)."""
    s = settings or get_settings()
    producer = make_producer(s)
    n = 0
    errors: list[Exception] = []
    try:
        for ev in tqdm(events, total=total, desc="produce", unit="ev", disable=not progress, mininterval=0.5):
            producer.send(s.events_topic, key=ev.user_id, value=ev.to_bytes()).add_errback(errors.append)
            n += 1
        producer.flush()
    finally:
        producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} events failed to produce; first error: {errors[0]!r}")
    return n


def produce_raw(values: Iterable[tuple[str | None, bytes]], settings: Settings | None = None) -> int:
    """Send raw (key, bytes) records to the events topic: used to exercise the DLQ."""
    s = settings or get_settings()
    producer = make_producer(s)
    n = 0
    try:
        for key, value in values:
            producer.send(s.events_topic, key=key, value=value)
            n += 1
        producer.flush()
    finally:
        producer.close()
    return n
