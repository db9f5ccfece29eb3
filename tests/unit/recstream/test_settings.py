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
])
def test_bad_settings_fail_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        Settings(**kwargs)
    assert needle in str(ei.value)
