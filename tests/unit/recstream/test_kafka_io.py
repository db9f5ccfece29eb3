"""Replication of the topics the platform creates, and the producers' acknowledgement settings."""

from __future__ import annotations

import pytest

from recstream import kafka_io
from recstream.errors import StackError
from recstream.kafka_io import topic_replication
from recstream.settings import Settings


@pytest.mark.parametrize("brokers,expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_unset_replication_follows_the_cluster(brokers, expected):
    assert topic_replication(Settings(), brokers) == expected


def test_explicit_replication_wins():
    s = Settings(kafka_replication_factor=2, kafka_min_insync_replicas=2)
    assert topic_replication(s, 5) == (2, 2)


def test_more_replicas_than_brokers_is_an_error_with_both_values():
    s = Settings(kafka_replication_factor=3, kafka_bootstrap="k1:9092")
    with pytest.raises(StackError, match=r"kafka_replication_factor \(3\) must be <= the brokers of the cluster at "
                                         r"k1:9092 \(1\)"):
        topic_replication(s, 1)


def test_min_insync_replicas_above_the_cluster_factor_is_an_error():
    """The settings cannot see this one at load time: the factor follows the cluster."""
    s = Settings(kafka_min_insync_replicas=2, kafka_bootstrap="k1:9092")
    with pytest.raises(StackError, match=r"kafka_min_insync_replicas \(2\) must be <= the replication factor \(1, for "
                                         r"1 broker\(s\) at k1:9092\)"):
        topic_replication(s, 1)


@pytest.mark.parametrize("acks,idempotent", [("all", True), ("1", False)])
def test_producers_follow_kafka_acks(monkeypatch, acks, idempotent):
    seen = {}

    class FakeProducer:
        def __init__(self, cfg=None, **kw):
            seen.update(cfg or kw)

    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    monkeypatch.setattr(kafka_io, "KafkaProducer", FakeProducer)
    s = Settings(kafka_bootstrap="127.0.0.1:1", kafka_acks=acks)
    kafka_io.make_bulk_producer(s)
    assert (seen["acks"], seen["enable.idempotence"]) == (acks, idempotent)
    seen.clear()
    kafka_io.make_producer(s)
    assert (seen["acks"], seen["enable_idempotence"]) == ("all" if idempotent else 1, idempotent)


class _Admin:
    """The KafkaAdminClient calls ensure_topics makes, over a cluster of `brokers` that already
    holds `existing` (topic -> replicas per partition)."""

    created: list = []

    def __init__(self, brokers: int, existing: dict[str, int]):
        self.brokers, self.topics = brokers, dict(existing)

    def __call__(self, **_kw):
        return self

    def describe_cluster(self):
        return {"brokers": [{"broker_id": i} for i in range(1, self.brokers + 1)]}

    def list_topics(self):
        return list(self.topics)

    def create_topics(self, new):
        for t in new:
            _Admin.created.append(t)
            self.topics[t.name] = t.replication_factor

    def describe_topics(self, names):
        return [{"name": n, "partitions": [{"partition_index": 0, "replica_nodes": list(range(self.topics[n]))}]}
                for n in names]

    def close(self):
        pass


def test_topics_are_created_replicated_for_the_cluster_and_old_ones_reported(monkeypatch, caplog):
    s = Settings(kafka_bootstrap="k1:9092", events_topic="t.events", dlq_topic="t.dlq", impressions_topic="t.imp")
    _Admin.created = []
    monkeypatch.setattr(kafka_io, "KafkaAdminClient", _Admin(3, {"t.events": 1}))
    with caplog.at_level("WARNING", logger="recstream.kafka_io"):
        assert kafka_io.ensure_topics(s) == ["t.events", "t.dlq", "t.imp"]
    assert {(t.name, t.replication_factor, t.topic_configs["min.insync.replicas"]) for t in _Admin.created} == {
        ("t.dlq", 3, "2"), ("t.imp", 3, "2")}
    assert "topic t.events has 1 replica(s), 3 wanted" in caplog.text
