"""Bulk loads (librdkafka) and the platform's producer (kafka-python) agree on partitions."""

from __future__ import annotations

import pytest

from pipelines.produce import produce_events
from recstream.events import Event
from recstream.kafka_io import make_producer
from tests.integration.kafka_utils import read_topic

pytestmark = pytest.mark.integration


def test_both_producers_put_a_user_on_the_same_partition(settings):
    users = [f"user-{k}" for k in range(40)]
    events = [Event(event_id=f"bulk-{u}", user_id=u, item_id="i1", type="click", ts=1_700_000_000_000) for u in users]
    assert produce_events(events, settings, progress=False) == len(users)
    producer = make_producer(settings)
    for u in users:
        producer.send(settings.events_topic, key=u,
                      value=Event(event_id=f"kp-{u}", user_id=u, item_id="i1", type="click", ts=1_700_000_000_000).to_bytes())
    producer.flush()
    producer.close()
    partitions: dict[str, set[int]] = {}
    for rec in read_topic(settings.kafka_bootstrap, settings.events_topic, 2 * len(users)):
        if rec.key and rec.key.decode().startswith("user-"):
            partitions.setdefault(rec.key.decode(), set()).add(rec.partition)
    assert len(partitions) == len(users)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len(set().union(*partitions.values())) > 1  # the keys do spread over partitions
