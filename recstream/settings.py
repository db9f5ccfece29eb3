"""Runtime settings, read from the environment with the `RECSTREAM_` prefix.

Strict: unknown fields are rejected and cross-field checks fail at load time with the
offending values in the message.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "recstream"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", extra="forbid", validate_default=True)

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, host:port[,host:port]; "
                                 "unset: the local stack's broker, 127.0.0.1:<stack_kafka_port>")
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Redis URL for online state; unset: the local "
                           "stack's redis://127.0.0.1:<stack_redis_port>/0; a Redis Cluster: "
                           "redis+cluster://host:port[,host:port] (seed nodes)")
    redis_key_layout: Literal["single", "partitioned"] | None = Field(
        None, description="single: every key in one keyspace (one Redis); partitioned: each key a processor writes "
        "for Kafka partition p carries the hash tag {<redis_prefix>:p<p>}, so state and stored offsets share a "
        "Redis Cluster slot (required on a cluster); unset: partitioned on a cluster URL, else single")
    home: Path = Field(default_factory=_default_home, description="cache root: Kafka jars, datasets, stack data")

    # The local stack (`recstream stack up`, the demo) listens on these; the defaults stay clear
    # of the usual 9092/6379 so a developer's own Kafka or Redis can run beside it.
    stack_kafka_port: int = Field(19092, ge=1024, le=65535, description="local stack: Kafka broker (PLAINTEXT) port")
    stack_kafka_controller_port: int = Field(19093, ge=1024, le=65535, description="local stack: KRaft controller port")
    stack_redis_port: int = Field(16379, ge=1024, le=65535, description="local stack: redis-server port")
    stack_kafka_brokers: int = Field(1, ge=1, le=5, description="local stack: Kafka nodes (`stack up --brokers`); 3 "
                                     "gives a replicated cluster whose extra nodes take ports from the OS")

    events_topic: str = Field("recstream.events", description="input events topic")
    dlq_topic: str = Field("recstream.events.dlq", description="dead-letter topic for bad events")
    impressions_topic: str = Field("recstream.impressions", description="served-slate log topic")
    topic_partitions: int = Field(4, ge=1, le=1024, description="partitions for topics we create")
    # Replication of the topics the platform creates (recstream.kafka_io.ensure_topics). Unset,
    # they follow the cluster: replication factor min(3, brokers it reports), min.insync.replicas
    # 2 from a replication factor of 3 on (one broker may die without stopping acks=all writes).
    kafka_replication_factor: int | None = Field(None, ge=1, le=32, description="replication factor of the topics we "
                                                 "create; unset: min(3, brokers in the cluster)")
    kafka_min_insync_replicas: int | None = Field(None, ge=1, le=32, description="min.insync.replicas of the topics we "
                                                  "create; unset: 2 when the replication factor is 3 or more, else 1")
    kafka_acks: Literal["all", "1"] = Field("all", description="producer acks: all (with idempotence: no loss or "
                                            "duplicate while min.insync.replicas replicas live) or 1 (leader only, "
                                            "idempotence off: a leader crash loses what it had not replicated)")

    redis_prefix: str = Field("rs", min_length=1, max_length=32, description="key prefix for all Redis keys")
    recent_items_max: int = Field(200, ge=1, le=100_000, description="per-user recent items kept for seen-filtering")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        ports = {"stack_kafka_port": self.stack_kafka_port, "stack_kafka_controller_port": self.stack_kafka_controller_port,
                 "stack_redis_port": self.stack_redis_port}
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"stack ports must differ: {ports}")
        # Unset endpoints follow the stack's ports, so moving the stack moves every client with it.
        if "kafka_bootstrap" not in self.model_fields_set:
            self.kafka_bootstrap = f"127.0.0.1:{self.stack_kafka_port}"
        if "redis_url" not in self.model_fields_set:
            self.redis_url = f"redis://127.0.0.1:{self.stack_redis_port}/0"
        from recstream.redis_io import cluster_nodes, is_cluster_url

        if is_cluster_url(self.redis_url):
            cluster_nodes(self.redis_url)  # raises naming the URL and the bad node
            if self.redis_key_layout is None:
                self.redis_key_layout = "partitioned"
            elif self.redis_key_layout != "partitioned":
                raise ValueError(f"redis_key_layout ({self.redis_key_layout!r}) must be 'partitioned' with a Redis "
                                 f"Cluster redis_url ({self.redis_url!r}): a transaction must stay in one hash slot")
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url ({self.redis_url!r}) must start with redis://, rediss://, unix:// or "
                             "redis+cluster://")
        if self.redis_key_layout is None:
            self.redis_key_layout = "single"
        for hp in self.kafka_bootstrap.split(","):
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"kafka_bootstrap ({self.kafka_bootstrap!r}) must be host:port[,host:port]")
        rf, isr = self.kafka_replication_factor, self.kafka_min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(f"kafka_min_insync_replicas ({isr}) must be <= kafka_replication_factor ({rf}): "
                             f"no write with acks=all could succeed")
        if isr is not None and isr > 1 and self.kafka_acks != "all":
            raise ValueError(f"kafka_min_insync_replicas ({isr}) is ignored with kafka_acks={self.kafka_acks!r}: "
                             f"set kafka_acks=all or leave kafka_min_insync_replicas unset")
        if len({self.events_topic, self.dlq_topic, self.impressions_topic}) != 3:
            raise ValueError(
                f"topics must differ: events_topic={self.events_topic!r} dlq_topic={self.dlq_topic!r} "
                f"impressions_topic={self.impressions_topic!r}"
            )
        return self

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def redis_partitions(self) -> int | None:
        """Partitions the Redis keys are aligned with (features/keys.py KeyLayout), None when single."""
        return self.topic_partitions if self.redis_key_layout == "partitioned" else None

    def to_env(self) -> dict[str, str]:
        """These settings as RECSTREAM_* variables, for a child process to read back."""
        # An unset optional stays unset (an empty variable would not parse as an int).
        return {f"RECSTREAM_{k.upper()}": str(v) for k, v in self.model_dump().items() if v is not None}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, loaded on first use. Invalid RECSTREAM_* values raise SettingsError
    with pydantic's message (each offending field and value): the `recstream` entry point prints it
    as one line and exits 2, whichever command asked."""
    from pydantic import ValidationError

    from recstream.errors import SettingsError

    try:
        return Settings()
    except ValidationError as e:
        raise SettingsError(f"invalid RECSTREAM_* settings: {e}") from None
