"""Produce events to Kafka from a dataset (MovieLens-100k or synthetic), with a progress bar."""

from __future__ import annotations

from typing import Iterable

from tqdm import tqdm

from recstream.events import Event
from recstream.kafka_io import make_bulk_producer, make_producer
from recstream.settings import Settings, get_settings


def produce_events(events: Iterable[Event], settings: Settings | None = None, total: int | None = None,
                   progress: bool = True, flush_timeout_s: float = 120.0) -> int:
    """Send events keyed by user_id; returns how many were acknowledged (acks=all).

    Raises:
        RuntimeError: when any event failed to be delivered (with the first error).
    """
    s = settings or get_settings()
    producer = make_bulk_producer(s)
    errors: list = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(err)

    n = 0
    for ev in tqdm(events, total=total, desc="produce", unit="ev", disable=not progress, mininterval=0.5):
        while True:
            try:
                producer.produce(s.events_topic, key=ev.user_id.encode("utf-8"), value=ev.to_bytes(), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: wait for deliveries to free it
                producer.poll(0.05)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)  # serve delivery callbacks as we go
    left = producer.flush(flush_timeout_s)
    if left:
        raise RuntimeError(f"{left} of {n} events not delivered to {s.events_topic} within {flush_timeout_s} s")
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} events failed to produce; first error: {errors[0]}")
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
