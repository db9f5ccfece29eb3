"""`recstream redis migrate` end to end: popularity, bse-encoder and feature-writer (publishing
to Feast and the item blobs) run on one Redis (single key layout) over the first half of a
6-partition topic, stop; the command copies their state into the Redis Cluster (partitioned
layout); the same processors, same consumer groups, then run on the cluster over the second half.
The end state must equal a from-scratch computation over all events.

Between the two halves the consumer groups are deleted, so the processors on the cluster would
read the topic from its start: only the offsets migrated with the state keep them from applying
the first half twice (with the offsets left out of the copy, the processors on the cluster apply
all 5,093 events instead of the 2,093 of the second half, and the test fails).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipelines.produce import produce_events
from tests.integration.procs import env_for, run_until_idle
from tests.integration.test_exactly_once import EMB_SPEC, MAX_SEQ_LEN
from tests.integration.test_redis_cluster import _check_bse, _check_popularity, check_features

pytestmark = pytest.mark.integration

PROCESSORS = ("popularity", "bse-encoder", "feature-writer")


def _processors(s) -> dict:
    """The three processors in-process on the settings' Redis and layout (the CLI's handlers)."""
    from pipelines.stream import ProcessorConfig, StreamProcessor
    from pipelines.stream.commands import _make_handler

    return {name: StreamProcessor(_make_handler(name, s, EMB_SPEC, "base", MAX_SEQ_LEN, feast=True),
                                  ProcessorConfig(name=name, batch_max_records=500), s) for name in PROCESSORS}


def _delete_groups(s) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    for fut in admin.delete_consumer_groups([f"recstream.{p}" for p in PROCESSORS], request_timeout=15).values():
        fut.result(timeout=30)


def test_single_redis_state_migrated_to_the_cluster_processors_resume_there_exactly(redis_url, cluster_settings):
    from pipelines.redis_migrate import migrate
    from recstream.errors import MigrationRefused
    from recstream.redis_io import redis_client
    from tests.builders import mixed_events
    from tests.integration.scratch import clean_scratch

    cs = cluster_settings  # the 6-partition topic, the prefix, the cluster (partitioned layout)
    single = cs.model_copy(update={"redis_url": redis_url, "redis_key_layout": "single"})
    assert single.redis_partitions is None and cs.redis_partitions == 6
    stream = mixed_events(6000, n_users=60, n_items=300, seed=3)  # items within EMB_SPEC's 3,000
    first = stream[: len(stream) // 2]
    # some users and items only in the first half: their Feast rows and item blobs, published on
    # the single Redis, reach the cluster by the migration alone
    only_first = {f"u{k}" for k in range(10)} | {f"i{k}" for k in range(50)}
    second = [e for e in stream[len(stream) // 2 :] if e.user_id not in only_first and e.item_id not in only_first]
    events, half = first + second, len(first)
    t0 = time.monotonic()
    try:
        produce_events(first, single, progress=False)
        run_until_idle(_processors(single), timeout_s=120)
        t_first = time.monotonic() - t0

        # users' keys are placed by the partition count: one that is not the topic's is refused
        with pytest.raises(MigrationRefused, match=rf"topic {cs.events_topic} has 6 partitions but "
                                                   "RECSTREAM_TOPIC_PARTITIONS=4"):
            migrate(cs.model_copy(update={"topic_partitions": 4}), single.redis_url, dry_run=True)
        # a dry run plans every family and writes nothing; the cluster is still empty
        plan = migrate(cs, single.redis_url, dry_run=True).plan
        assert plan.n_unknown == 0 and not plan.target_existing, plan.lines()
        assert set(plan.copy) >= {"popularity.pop", "popularity.seen", "popularity.recent", "popularity.offsets",
                                  "bse-encoder.seq", "bse-encoder.n", "bse-encoder.tab", "bse-encoder.version",
                                  "bse-encoder.offsets", "feature-writer.user", "feature-writer.item",
                                  "feature-writer.genres", "feature-writer.item-blob", "feature-writer.feast",
                                  "feature-writer.offsets"}, plan.lines()
        assert {p: sum(o.values()) for (p, _), o in plan.offsets.items()} == {p: half for p in PROCESSORS}
        dst = redis_client(cs.redis_url)
        assert not any(dst.scan_iter(match=f"{{{cs.redis_prefix}:p*", count=1000))

        out = subprocess.run([sys.executable, "-m", "cli", "redis", "migrate", "--source", single.redis_url,
                              "--no-progress"], env=env_for(cs), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"copied {plan.n_keys:,} keys" in out.stdout, out.stdout
        # a second run finds the state there and refuses, naming what it found
        with pytest.raises(MigrationRefused, match=r"already holds state of the chosen processors \(.*popularity.seen"):
            migrate(cs, single.redis_url)
        t_migrate = time.monotonic() - t0 - t_first

        _delete_groups(cs)  # from here only the migrated offsets say where each partition resumes
        produce_events(second, cs, progress=False)
        procs = _processors(cs)
        run_until_idle(procs, timeout_s=120)
        applied = {name: p.applied_total for name, p in procs.items()}
        print(f"first half {t_first:.1f} s, migration {t_migrate:.1f} s, second half "
              f"{time.monotonic() - t0 - t_first - t_migrate:.1f} s; applied on the cluster {applied}")
        # (the BSE counts the behaviours it appends: positive events only)
        assert applied == {"popularity": len(second), "feature-writer": len(second),
                           "bse-encoder": sum(e.is_positive for e in second)}, applied

        _check_popularity(cs, events)
        _check_bse(cs, events)
        check_features(cs, events)  # Feast rows and item blobs of the only_first entities: the migration's
    finally:
        clean_scratch(single)  # the single Redis's keys under the prefix (the fixture cleans the cluster)
