"""Small Kafka helpers for integration tests."""

from __future__ import annotations

import json
import time

from kafka import KafkaConsumer


def read_topic(bootstrap: str, topic: str, min_records: int, timeout_s: float = 30.0) -> list:
    """Read a topic from the beginning until min_records arrived (or timeout). Returns ConsumerRecords."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      group_id=None, consumer_timeout_ms=1000)
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < min_records and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500).items():
                out.extend(recs)
    finally:
        c.close()
    return out


def read_json(bootstrap: str, topic: str, min_records: int, timeout_s: float = 30.0) -> list[dict]:
    return [json.loads(r.value) for r in read_topic(bootstrap, topic, min_records, timeout_s)]
