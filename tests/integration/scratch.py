"""Per-test namespaces on the session's servers, and their removal afterwards.

A test gets topics and a Redis prefix of its own (`t<hex>`), and a home folder in the session's
temp dir (its Feast repository lives there, not under the user's ~/.cache). Afterwards every
topic named `<prefix>.*`, every Redis key `<prefix>:*`, the Feast rows of its project and its
Feast folder are removed, so servers named by RECSTREAM_KAFKA_BOOTSTRAP / RECSTREAM_REDIS_URL
are left as they were found (the local stack is discarded at the end of the session anyway, and
the removal runs there too, so it is exercised on every run).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from pathlib import Path

from recstream.settings import Settings

log = logging.getLogger(__name__)


def scratch_settings(endpoints, home: Path, tag: str | None = None, **overrides) -> Settings:
    """Settings on the session's servers with topics and a Redis prefix unique to one user of them."""
    tag = tag or f"t{uuid.uuid4().hex[:8]}"
    fields = dict(kafka_bootstrap=endpoints.kafka_bootstrap, redis_url=endpoints.redis_url, home=home,
                  events_topic=f"{tag}.events", dlq_topic=f"{tag}.events.dlq", impressions_topic=f"{tag}.impressions",
                  topic_partitions=2, redis_prefix=tag)
    return Settings(**{**fields, **overrides})


def clean_scratch(s: Settings) -> dict[str, int]:
    """Remove what a scratch namespace left on the servers; returns how many topics and keys went."""
    from confluent_kafka.admin import AdminClient

    from recstream.redis_io import redis_client

    prefix = s.redis_prefix
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
    for topic, fut in (admin.delete_topics(topics, operation_timeout=30).items() if topics else ()):
        try:
            fut.result(timeout=30)
        except Exception as e:  # already gone, or the broker is slow: never fail a test on cleanup
            log.warning("could not delete topic %s: %s", topic, e)
    r = redis_client(s.redis_url)
    n_keys = 0
    # Feast's Redis keys end with the project name (recstream_<prefix>, features/feast_repo.py);
    # the partitioned layout's keys start with a partition hash tag {<prefix>:p<p>}
    for pattern in (f"{prefix}:*", f"{{{prefix}:p*", f"*recstream_{prefix}".replace("-", "_")):
        batch = []
        for key in r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n_keys += r.delete(*batch)
                batch = []
        if batch:
            n_keys += r.delete(*batch)
    r.close()
    shutil.rmtree(Path(s.home) / "feast" / prefix, ignore_errors=True)
    return {"topics": len(topics), "keys": n_keys}


@contextlib.contextmanager
def scratch(endpoints, home: Path, **overrides):
    """scratch_settings with its topics created, cleaned afterwards."""
    from recstream.kafka_io import ensure_topics

    s = scratch_settings(endpoints, home, **overrides)
    ensure_topics(s)
    try:
        yield s
    finally:
        clean_scratch(s)
