"""Redis comes back from an older snapshot while the processors run.

The subtle half of the exactly-once claim: offsets are stored with the state, so when Redis is
restored older, both roll back together and each processor must notice, seek back to the stored
offsets and apply those records again. A redis-server of its own (RDB only, so the test chooses
the snapshot it starts from; ports from the OS, files in the test's temp dir) holds the state of
the three Kafka-consuming processors, which run in this process on the session's Kafka:

1. events A are applied; SAVE; the RDB file is copied aside;
2. events B are applied; redis-server stops; the copy is put back; redis-server starts: the state
   and its offsets are as of A, while every processor has consumed B and the topic is quiet;
3. every processor must rewind (counted) and apply B again; then events C arrive.

The end state must equal, key by key, what the same processors leave in a fresh prefix of the
session's Redis after reading the whole topic once, without interruption; the packed item
features also equal the independent oracle (tests/feature_oracle.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import redis

from deploy.local import free_ports
from features.item_features import ITEM_FEATURE_NAMES, RedisItemFeatures
from pipelines.produce import produce_events
from pipelines.stream import ProcessorConfig, StreamProcessor
from tests.builders import mixed_events
from tests.feature_oracle import item_frame
from tests.integration.procs import all_handlers, run_until_idle, running, wait_until

pytestmark = pytest.mark.integration

EVENTS = mixed_events(9_000, n_users=80, n_items=300, seed=21)
A, B = EVENTS[:4_000], EVENTS[4_000:7_000]
C = EVENTS[7_000:]
# Written per batch, not part of the state: freshness samples and outbox change counters.
VOLATILE = (":fw:fresh", ":fw:dirty:")


class _RedisServer:
    """A redis-server with RDB persistence only, started from whatever dump.rdb its folder holds."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (make bootstrap installs it)"
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                                      "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "",
                                      "--protected-mode", "no"], stdout=log, stderr=subprocess.STDOUT)
        c = redis.Redis.from_url(self.url)
        wait_until(lambda: c.ping(), "redis-server answers", timeout_s=30)

    def snapshot(self, to: Path) -> None:
        redis.Redis.from_url(self.url).save()  # synchronous: dump.rdb is complete when it returns
        shutil.copy(self.dir / "dump.rdb", to)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _processors(settings, suffix: str = "") -> dict[str, StreamProcessor]:
    # suffix: another consumer group (the reference run reads the topic from the start)
    return {name: StreamProcessor(h, ProcessorConfig(name=name + suffix, batch_max_records=500), settings)
            for name, h in all_handlers(settings).items()}


def _applied(procs: dict[str, StreamProcessor], topic: str) -> int:
    return min(sum(p.handler.stored_offsets(topic).values()) for p in procs.values())


def _offsets_in_snapshot(snapshot: Path, folder: Path, settings, topic: str) -> list[int]:
    """Each processor's stored offsets (summed over partitions) in an RDB file, read from a
    redis-server of its own: the running processors would start rewinding the restored server
    before the test could look at it."""
    probe = _RedisServer(folder)
    shutil.copy(snapshot, probe.dir / "dump.rdb")
    probe.start()
    try:
        handlers = all_handlers(settings.model_copy(update={"redis_url": probe.url}))
        return [sum(h.stored_offsets(topic).values()) for h in handlers.values()]
    finally:
        probe.stop()


def _state(url: str, prefix: str) -> dict[str, object]:
    """Every key under prefix with its value, read by type (encodings and insertion order aside)."""
    c = redis.Redis.from_url(url)
    out: dict[str, object] = {}
    for key in c.scan_iter(match=f"{prefix}:*", count=1000):
        k = key.decode()
        if any(v in k for v in VOLATILE):
            continue
        t = c.type(key).decode()
        out[k] = {"string": lambda: c.get(key), "hash": lambda: c.hgetall(key), "set": lambda: c.smembers(key),
                  "zset": lambda: c.zrange(key, 0, -1, withscores=True), "list": lambda: c.lrange(key, 0, -1)}[t]()
    return out


def test_redis_restored_from_an_older_snapshot_is_rewound_to_equal_from_scratch(settings, tmp_path):
    server = _RedisServer(tmp_path / "redis")
    server.start()
    try:
        s = settings.model_copy(update={"redis_url": server.url})
        procs = _processors(s)
        topic = s.events_topic
        with running(procs):
            produce_events(A, s, progress=False)
            wait_until(lambda: _applied(procs, topic) == len(A), "events A applied")
            server.snapshot(tmp_path / "after-A.rdb")

            produce_events(B, s, progress=False)
            wait_until(lambda: _applied(procs, topic) == len(A) + len(B), "events B applied")
            server.stop()
            assert _offsets_in_snapshot(tmp_path / "after-A.rdb", tmp_path / "probe", s, topic) == [len(A)] * 3
            shutil.copy(tmp_path / "after-A.rdb", server.dir / "dump.rdb")
            server.start()

            # the topic is quiet: only the idle check can find the rollback
            wait_until(lambda: all(p.rewinds_total >= 1 for p in procs.values()), "every processor rewinds", 120)
            wait_until(lambda: _applied(procs, topic) == len(A) + len(B), "events B applied again")
            produce_events(C, s, progress=False)
            wait_until(lambda: _applied(procs, topic) == len(EVENTS), "events C applied")
            # the last publication (item blobs) follows the last batch
            fw = procs["feature-writer"].handler
            wait_until(lambda: fw.r.hlen(fw.keys.dirty("online", "i")) == 0, "outbox published")
        actual = _state(server.url, s.redis_prefix)
    finally:
        server.stop()

    # From scratch: the same processors over the whole topic, once, in the session's Redis.
    ref = _processors(settings, suffix="-ref")
    run_until_idle(ref)
    assert _applied(ref, topic) == len(EVENTS)
    expected = _state(settings.redis_url, settings.redis_prefix)
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))[:10]
    differ = [k for k in expected if actual[k] != expected[k]]
    assert not differ, f"{len(differ)} keys differ, e.g. {differ[:5]}"
    assert any(":bse:" in k for k in expected) and any(":pop" in k for k in expected)

    oracle = item_frame(EVENTS)
    blobs = RedisItemFeatures.from_url(settings.redis_url, prefix=settings.redis_prefix).read(list(oracle["item_id"]))
    np.testing.assert_allclose(blobs, oracle[list(ITEM_FEATURE_NAMES)].to_numpy(dtype=np.float32), rtol=1e-5)
