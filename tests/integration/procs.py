"""Run processors as real OS processes (so tests can SIGKILL them) and wait on their progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable


def env_for(settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def spawn_processor(settings, name: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recstream.cli", "process", name, "--batch-max-records", "500", *args]
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


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> None:
    try:
        rc = proc.wait(timeout=timeout_s)
        assert rc == 0, proc.stdout.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


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


def run_until_idle(procs: dict, timeout_s: float = 240) -> None:
    """Run in-process StreamProcessors side by side until each has been idle for 3 s."""
    import threading

    threads = [threading.Thread(target=p.run, kwargs={"max_idle_s": 3.0}) for p in procs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
        assert not t.is_alive(), "a processor hung"
