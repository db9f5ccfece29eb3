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


def read_impression(bootstrap: str, topic: str, request_id: str, timeout_s: float = 60.0) -> dict:
    """The impression log record of one request: the topic is read from the beginning until that
    request id appears (other tests' requests may share the topic in any number); fails on timeout."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      group_id=None, consumer_timeout_ms=1000)
    deadline = time.monotonic() + timeout_s
    seen = 0
    try:
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    seen += 1
                    record = json.loads(r.value)
                    if record.get("request_id") == request_id:
                        return record
    finally:
        c.close()
    raise AssertionError(f"request {request_id} not in {topic} after {timeout_s} s ({seen} records read)")


def group_committed(bootstrap: str, group_id: str, topic: str, partitions) -> dict[int, int]:
    """partition -> the consumer group's committed offset (partitions it never committed left out).
    Reads without joining the group."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
                if tp.offset >= 0}
    finally:
        c.close()
