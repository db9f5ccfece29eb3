import pytest
from pydantic import ValidationError

from recstream.settings import Settings


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("RECSTREAM_TOPIC_PARTITIONS", "8")
    monkeypatch.setenv("RECSTREAM_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    s = Settings()
    assert s.topic_partitions == 8 and s.kafka_bootstrap == "k1:9092,k2:9092"


@pytest.mark.parametrize("kwargs,needle", [
    ({"redis_url": "http://x"}, "redis_url ('http://x')"),
    ({"kafka_bootstrap": "nohost"}, "kafka_bootstrap ('nohost')"),
    ({"dlq_topic": "recstream.events"}, "topics must differ"),
    ({"topic_partitions": 0}, "topic_partitions"),
    ({"unknown_setting": 1}, "unknown_setting"),
    ({"stack_kafka_port": 20000, "stack_redis_port": 20000}, "stack ports must differ"),
    ({"stack_redis_port": 80}, "stack_redis_port"),
    ({"kafka_replication_factor": 2, "kafka_min_insync_replicas": 3},
     "kafka_min_insync_replicas (3) must be <= kafka_replication_factor (2)"),
    ({"kafka_min_insync_replicas": 2, "kafka_acks": "1"}, "kafka_min_insync_replicas (2) is ignored with kafka_acks='1'"),
    ({"kafka_acks": "0"}, "kafka_acks"),
    ({"stack_kafka_brokers": 6}, "stack_kafka_brokers"),
])
def test_bad_settings_fail_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        Settings(**kwargs)
    assert needle in str(ei.value)


def test_unset_endpoints_follow_the_stack_ports(monkeypatch):
    for var in ("RECSTREAM_KAFKA_BOOTSTRAP", "RECSTREAM_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECSTREAM_STACK_KAFKA_PORT", "29092")
    monkeypatch.setenv("RECSTREAM_STACK_REDIS_PORT", "26379")
    s = Settings()
    assert s.kafka_bootstrap == "127.0.0.1:29092" and s.redis_url == "redis://127.0.0.1:26379/0"
    assert Settings(**{k.removeprefix("RECSTREAM_").lower(): v for k, v in s.to_env().items()}) == s  # round trip


def test_explicit_endpoints_win_over_the_stack_ports():
    s = Settings(stack_kafka_port=29092, kafka_bootstrap="k1:9092", redis_url="redis://r:1/0")
    assert s.kafka_bootstrap == "k1:9092" and s.redis_url == "redis://r:1/0"


@pytest.mark.parametrize("var,value,needle", [
    ("RECSTREAM_REDIS_URL", "http://x", "redis_url ('http://x')"),
    ("RECSTREAM_KAFKA_BOOTSTRAP", "nohost", "kafka_bootstrap ('nohost')"),
    ("RECSTREAM_TOPIC_PARTITIONS", "zero", "topic_partitions"),
    ("RECSTREAM_TOPIC_PARTITIONS", "0", "topic_partitions"),
    ("RECSTREAM_STACK_REDIS_PORT", "80", "stack_redis_port"),
    ("RECSTREAM_DLQ_TOPIC", "recstream.events", "topics must differ"),
])
def test_bad_environment_variables_fail_at_load_with_the_value(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as ei:
        Settings()
    assert needle in str(ei.value)


def test_replication_settings_round_trip_through_the_environment(monkeypatch):
    """to_env leaves an unset optional out (an empty variable would not parse back as an int)."""
    s = Settings(kafka_replication_factor=3)
    env = s.to_env()
    assert env["RECSTREAM_KAFKA_REPLICATION_FACTOR"] == "3" and "RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS" not in env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    back = Settings()
    assert (back.kafka_replication_factor, back.kafka_min_insync_replicas, back.kafka_acks) == (3, None, "all")


def test_a_cluster_url_selects_the_partitioned_layout():
    s = Settings(redis_url="redis+cluster://10.0.0.1:7000,10.0.0.2:7001", topic_partitions=12)
    assert s.redis_key_layout == "partitioned" and s.redis_partitions == 12
    assert Settings(**{k.removeprefix("RECSTREAM_").lower(): v for k, v in s.to_env().items()}) == s  # round trip
    single = Settings(redis_url="redis://r:1/0")
    assert single.redis_key_layout == "single" and single.redis_partitions is None
    assert Settings(redis_url="redis://r:1/0", redis_key_layout="partitioned").redis_partitions == 4


@pytest.mark.parametrize("kwargs,needle", [
    ({"redis_url": "redis+cluster://h:7000", "redis_key_layout": "single"},
     "redis_key_layout ('single') must be 'partitioned' with a Redis Cluster redis_url ('redis+cluster://h:7000')"),
    ({"redis_url": "redis+cluster://h:7000,nohost"}, "node 'nohost' must be host:port"),
    ({"redis_url": "redis+cluster://h:70000"}, "node 'h:70000' must be host:port"),
    ({"redis_url": "redis+cluster://h:7000/0"}, "'redis+cluster://h:7000/0' must be redis+cluster://host:port"),
    ({"redis_url": "redis+cluster://"}, "must be redis+cluster://host:port"),
    ({"redis_key_layout": "sharded"}, "redis_key_layout"),
])
def test_bad_cluster_settings_fail_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        Settings(**kwargs)
    assert needle in str(ei.value)
