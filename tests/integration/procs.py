"""Run processors as real OS processes (so tests can SIGKILL them) and wait on their progress."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from typing import Callable


# The failure tests' workload: 220 users x (450 views + 8 impressions + clicks), a little over 100k
# events, cut at N_EVENTS.
N_EVENTS = 100_000


def stream_100k() -> list:
    """The first N_EVENTS synthetic events (seed 11, 3,000 items)."""
    import itertools

    from pipelines.data.synthetic import SyntheticConfig, generate_events

    cfg = SyntheticConfig(n_users=220, n_items=3000, seq_len=450, short_len=50, seed=11)
    events = list(itertools.islice(generate_events(cfg), N_EVENTS))
    assert len(events) == N_EVENTS
    return events


def env_for(settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def spawn_processor(settings, name: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cli", "process", name, "--batch-max-records", "500", *args]
    return subprocess.Popen(cmd, env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(progress: Callable[[], int], at_least: int, proc: subprocess.Popen, timeout_s: float = 300) -> int:
    """Poll progress() until it reaches at_least; fail with the process output if it dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = progress()
        if n >= at_least:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"processor exited early (rc={proc.returncode}): {proc.stdout.read().decode()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"processor reached only {progress()} of {at_least} in {timeout_s}s")


def finish(proc: subprocess.Popen, timeout_s: float = 120, rc: int = 0) -> str:
    """Wait for the process to exit with status rc; returns its output (stdout and stderr)."""
    try:
        got = proc.wait(timeout=timeout_s)
        out = proc.stdout.read().decode(errors="replace")
        assert got == rc, f"exit status {got}, expected {rc}: {out[-3000:]}"
        return out
    finally:
        if proc.poll() is None:
            proc.kill()


def resume_skipped(output: str, processor: str) -> int:
    """Records a restarted processor reported skipping past its group's committed offsets (its
    log line; pipelines/stream/base.py StreamProcessor._resumed)."""
    import re

    return sum(int(n) for n in re.findall(rf"processor {processor}: resuming past the group's committed offsets: "
                                          r"(\d+) records already applied", output))


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 240) -> None:
    """Poll cond() until it holds; a dependency error while polling counts as "not yet"."""
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout_s}s: {what}")


def all_handlers(settings) -> dict:
    """The three Kafka-consuming processors' handlers on one settings' Redis (no Feast), by name."""
    import redis

    from features.bse import RedisBseStore, TableVersion
    from features.item_features import RedisItemFeatures
    from models.sdim_hash import SdimConfig, SdimHasher
    from pipelines.stream import PopularityHandler
    from pipelines.stream.bse_encoder import BseEncoderHandler, load_item_embeddings
    from pipelines.stream.feature_publisher import FeaturePublisher
    from pipelines.stream.feature_writer import FeatureWriterHandler

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    emb = load_item_embeddings("random:100:0")
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                   versions=[TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb)])
    return {
        "popularity": PopularityHandler(r, settings.redis_prefix),
        "bse-encoder": BseEncoderHandler(store),
        "feature-writer": FeatureWriterHandler(r, settings.redis_prefix, publisher=FeaturePublisher(
            r, settings.redis_prefix, repo=None, item_blobs=RedisItemFeatures.from_url(settings.redis_url, prefix=settings.redis_prefix))),
    }


@contextlib.contextmanager
def running(procs: dict):
    """In-process StreamProcessors run in threads for the duration of the block, then stop."""
    threads = [threading.Thread(target=p.run, daemon=True) for p in procs.values()]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for p in procs.values():
            p.stop()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a processor did not stop"


def run_until_idle(procs: dict, timeout_s: float = 240) -> None:
    """Run in-process StreamProcessors side by side until each has been idle for 3 s."""
    threads = [threading.Thread(target=p.run, kwargs={"max_idle_s": 3.0}) for p in procs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
        assert not t.is_alive(), "a processor hung"
