"""The Kafka failover drill (benchmarks/drill_kafka.py) at a small size on a real 3-broker KRaft
cluster: one broker SIGKILLed mid-stream and restarted while the processors and the impression
logger run. The full-size run is `recstream drill kafka` (reports/drill_kafka.md)."""

from __future__ import annotations

import pytest

from benchmarks.drill_kafka import KafkaDrillConfig, run_drill

pytestmark = pytest.mark.integration


def test_a_broker_killed_mid_stream_loses_nothing_and_applies_nothing_twice(kafka_cluster, tmp_path):
    cfg = KafkaDrillConfig(events=6_000, events_per_s=1_000, impressions_per_s=100, down_s=3.0)
    res = run_drill(kafka_cluster, tmp_path, cfg, tag="tdrill")

    # The drill did what it says: a 3-way replicated topic, a leader killed while records flowed.
    assert (res["kafka_drill_replication_factor"], res["kafka_drill_min_insync_replicas"]) == (3, 2)
    assert res["kafka_drill_killed_broker_led_partitions"] >= 1
    assert kafka_cluster.broker_pid(res["kafka_drill_killed_broker"]) is not None  # back after the drill
    assert res["kafka_drill_events_acknowledged"] == res["kafka_drill_events_in_log"] == cfg.events
    assert res["kafka_drill_impressions_in_log"] == res["kafka_drill_impressions_accepted"] == res["kafka_drill_impressions"]
    for key in ("kafka_drill_lost_events", "kafka_drill_double_applied", "kafka_drill_popularity_items_wrong",
                "kafka_drill_impressions_lost", "kafka_drill_errors"):
        assert res[key] == 0, (key, res)
