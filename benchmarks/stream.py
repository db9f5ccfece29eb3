"""Stream benchmark: processor throughput, freshness at a fixed rate, read paths, BSE size.

Writes `reports/stream.json` (flat keys) and `reports/stream.md`. Everything runs against the
real stack (Kafka, Redis, Feast with the Redis online store) with topics and key prefixes unique
to the run, and every variant is measured in the same run so ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from features.feast_repo import repo_for_settings
from benchmarks.item_reads import bench_item_reads
from features.item_features import RedisItemFeatures
from features.keys import offsets_key
from pipelines.data.synthetic import SyntheticConfig, generate_events
from pipelines.produce import produce_events
from pipelines.stream.base import ProcessorConfig, StreamProcessor
from pipelines.stream.feature_publisher import FeaturePublisher
from pipelines.stream.feature_writer import FeatureKeys, FeatureWriterHandler
from recstream.kafka_io import ensure_topics, make_bulk_producer
from recstream.settings import Settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _scratch(settings: Settings):
    """Settings with topics, Redis keys and a Feast project unique to one measurement, removed
    afterwards (a benchmark should not leave a million keys in someone's Redis)."""
    tag = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={"events_topic": f"bench{tag}.events", "dlq_topic": f"bench{tag}.events.dlq",
                                    "impressions_topic": f"bench{tag}.impressions", "redis_prefix": f"bench{tag}"})
    ensure_topics(s)
    try:
        yield s
    finally:
        r = redis.Redis.from_url(s.redis_url)
        # Ours, and Feast's online rows (keys end with the project name, one project per prefix).
        for pattern in (f"{s.redis_prefix}:*", f"*recstream_{s.redis_prefix}"):
            batch = []
            for key in r.scan_iter(match=pattern, count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    r.unlink(*batch)
                    batch.clear()
            if batch:
                r.unlink(*batch)
        shutil.rmtree(Path(s.home) / "feast" / s.redis_prefix, ignore_errors=True)
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, client_id="recstream-bench")
        try:
            admin.delete_topics([s.events_topic, s.dlq_topic, s.impressions_topic])
        except Exception as e:  # leftovers are harmless; say so rather than fail a finished run
            log.warning("bench: could not delete topics of %s: %s", s.redis_prefix, e)
        finally:
            admin.close()


def _events(n: int, seed: int = 3, events_per_user: int = 500):
    """Synthetic, time-ordered events; users interleave, so a batch of B events touches about
    min(n_users, B) users. Fewer events per user = more distinct users per batch = harder."""
    cfg = SyntheticConfig(n_users=max(1, n // events_per_user), n_items=5000, seq_len=events_per_user - 10,
                          short_len=min(50, events_per_user - 10), seed=seed)
    return list(itertools.islice(generate_events(cfg), n))


def _throughput(settings: Settings, handler, name: str, n: int, batch: int) -> dict:
    """Events/s of one processor consuming n pre-produced events (steady state: first to last batch)."""
    proc = StreamProcessor(handler, ProcessorConfig(name=name, batch_max_records=batch), settings)
    marks: list[tuple[float, int]] = []
    orig_step = proc.step

    def step() -> int:
        got = orig_step()
        if got:
            marks.append((time.perf_counter(), got))
        return got

    proc.step = step
    t = threading.Thread(target=proc.run, kwargs={"max_idle_s": 3.0}, daemon=True)
    t.start()
    t.join(timeout=1800)
    consumed = sum(k for _, k in marks)
    if consumed < n or len(marks) < 2:
        raise RuntimeError(f"{name}: consumed {consumed} of {n} events")
    # Steady state: from the end of the first batch to the end of the last.
    span_s = marks[-1][0] - marks[0][0]
    return {"events_per_s": (consumed - marks[0][1]) / span_s, "events": consumed, "seconds": span_s}


def _spawn(s: Settings, *args: str) -> subprocess.Popen:
    """A `recstream` command in its own process (its own GIL, as deployed), with these settings."""
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env={**os.environ, **s.to_env()},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(child: subprocess.Popen, what: str, timeout_s: float = 300) -> None:
    try:
        rc = child.wait(timeout=timeout_s)
    finally:
        if child.poll() is None:
            child.kill()
    if rc != 0:
        raise RuntimeError(f"{what} exited with {rc}: {child.stdout.read().decode()[-2000:]}")


def _outbox_empty(s: Settings) -> bool:
    r = redis.Redis.from_url(s.redis_url)
    keys = FeatureKeys(s.redis_prefix)
    return not any(r.hlen(keys.dirty(t, e)) for t in ("online", "offline") for e in ("u", "i"))


def _publisher(s: Settings) -> FeaturePublisher:
    return FeaturePublisher(redis.Redis.from_url(s.redis_url, decode_responses=True), s.redis_prefix,
                            repo=repo_for_settings(s), item_blobs=RedisItemFeatures.from_url(s.redis_url, prefix=s.redis_prefix))


def bench_feature_writer(settings: Settings, n: int = 100_000, batch: int = 5000) -> dict:
    """The writer with a feature-publisher process publishing to Feast at the same time (the
    deployed layout), and, in the same run, one process doing both (`--publish inline`)."""
    out = {}
    for layout in ("separate", "inline"):
        with _scratch(settings) as s:
            out.update(_feature_writer_run(s, layout, n, batch))
    return out


def _feature_writer_run(s: Settings, layout: str, n: int, batch: int) -> dict:
    produce_events(_events(n), s, progress=False)
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    if layout == "separate":
        publisher = _spawn(s, "process", "feature-publisher", "--max-idle-s", "10")
        handler = FeatureWriterHandler(r, s.redis_prefix)
    else:
        publisher, handler = None, FeatureWriterHandler(r, s.redis_prefix, publisher=_publisher(s))
    res = _throughput(s, handler, "feature-writer", n, batch)
    if publisher is not None:
        _finish(publisher, "feature-publisher")
    if not _outbox_empty(s):
        raise RuntimeError(f"feature-writer ({layout}): entities left unpublished")
    key = "feature_writer_events_per_s" if layout == "separate" else "feature_writer_inline_publish_events_per_s"
    return {key: res["events_per_s"]}


def bench_bse_encoder(settings: Settings, n: int = 100_000, batch: int = 5000, events_per_user: int = 500) -> dict:
    from features.bse import RedisBseStore, TableVersion
    from models.sdim_hash import SdimConfig, SdimHasher
    from pipelines.stream.bse_encoder import BseEncoderHandler, load_item_embeddings

    with _scratch(settings) as s:
        produce_events(_events(n, events_per_user=events_per_user), s, progress=False)
        emb = load_item_embeddings("random:5000:0")
        store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix,
                                       versions=[TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb)])
        res = _throughput(s, BseEncoderHandler(store), "bse-encoder", n, batch)
    return {"bse_encoder_events_per_s": res["events_per_s"]}


def _paced_producer(settings_json: str, rate_per_s: int, duration_s: float, seed: int, out) -> None:
    """Child process: produce at a fixed rate (its own interpreter, so it does not share the GIL
    with the processes being measured). librdkafka keeps the producer's CPU small: in production
    producers run elsewhere, here they share the two cores. Sends the achieved rate back."""
    s = Settings.model_validate_json(settings_json)
    payloads = [(e.user_id.encode(), e.to_bytes()) for e in _events(int(rate_per_s * duration_s), seed=seed)]
    producer = make_bulk_producer(s, **{"linger.ms": 1})
    # Connected, with topic metadata and a producer id, before the clock: records are stamped
    # when produced, so a cold start would count as freshness.
    producer.list_topics(s.events_topic, timeout=15)
    producer.flush(15)
    time.sleep(1.0)
    per_tick = max(1, rate_per_s // 100)  # 10 ms ticks
    t0 = time.perf_counter()
    for k in range(0, len(payloads), per_tick):
        for key, value in payloads[k:k + per_tick]:
            producer.produce(s.events_topic, key=key, value=value)
        producer.poll(0)
        ahead = t0 + (k + per_tick) / rate_per_s - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(30)
    out.send(len(payloads) / (time.perf_counter() - t0))


def bench_freshness(settings: Settings, rate_per_s: int = 5000, duration_s: float = 10.0) -> dict:
    """Feature freshness (Kafka create time -> readable in Feast online and the item blobs) at a
    fixed produce rate: producer, feature-writer and feature-publisher each in its own process as
    deployed (the publisher runs here, to read its measurements)."""
    with _scratch(settings) as s:
        f, achieved = _freshness_run(s, rate_per_s, duration_s)
    n = int(rate_per_s * duration_s)
    if len(f) < n // 8:  # the writer samples every 4th offset of each partition
        raise RuntimeError(f"freshness: only {len(f)} samples for {n} events")
    return {"freshness_p50_ms": float(np.percentile(f, 50)), "freshness_p99_ms": float(np.percentile(f, 99)),
            "freshness_rate_events_per_s": achieved, "freshness_samples": len(f)}


def _freshness_run(s: Settings, rate_per_s: int, duration_s: float) -> tuple[np.ndarray, float]:
    """Returns: (freshness of the sampled events in ms, achieved produce rate)."""
    import multiprocessing as mp

    writer = _spawn(s, "process", "feature-writer", "--publish", "separate", "--batch-max-records", "5000")
    publisher = _publisher(s)
    stop = threading.Event()
    t = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    t.start()
    time.sleep(8.0)  # the writer joins the group before the clock starts
    n = int(rate_per_s * duration_s)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_paced_producer, args=(s.model_dump_json(), rate_per_s, duration_s, 9, send))
    child.start()
    child.join(timeout=duration_s * 10 + 60)
    achieved = recv.recv() if recv.poll(1) else float("nan")
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    offsets = offsets_key(s.redis_prefix, "feature-writer", s.events_topic)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # everything applied and every freshness mark consumed
        if sum(int(v) for v in r.hgetall(offsets).values()) >= n and not r.llen(FeatureKeys(s.redis_prefix).fresh_marks):
            break
        time.sleep(0.1)
    writer.send_signal(signal.SIGTERM)
    _finish(writer, "feature-writer", 60)
    stop.set()
    t.join(timeout=60)
    return np.array(publisher.freshness_ms), achieved


def bench_bse_bytes(settings: Settings, seq_len: int = 10_000, tastes: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 25, 50)) -> dict:
    """Redis MEMORY USAGE of a user's tables after 10,000 behaviours, for users whose items come
    from 1 to 50 clusters of similar items (clustered tastes make the widest bucket sums: the
    costly case for packing). Reports the largest and the mean."""
    from features.bse import Behaviour, RedisBseStore, TableVersion
    from benchmarks.bse import clustered_embeddings
    from models.sdim_hash import SdimConfig, SdimHasher

    emb, label = clustered_embeddings(5000, seed=0)
    v = TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb)
    sizes = []
    with _scratch(settings) as s:
        store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, versions=[v], max_seq_len=seq_len)
        rng = np.random.default_rng(0)
        for n_clusters in tastes:
            user = f"L{seq_len}-{n_clusters}c"
            pool = np.flatnonzero(np.isin(label, rng.choice(label.max() + 1, size=n_clusters, replace=False)))
            items = rng.choice(pool, size=seq_len)
            for k in range(0, seq_len, 2000):
                store.apply_batch([Behaviour(user, f"i{i}") for i in items[k:k + 2000]])
            sizes.append(store.table_bytes(user, v))
    return {"bse_bytes_per_user_L10000": max(sizes), "bse_bytes_per_user_L10000_mean": float(np.mean(sizes))}


def run(settings: Settings, out_dir: Path = Path("reports"), n_events: int = 100_000) -> dict:
    res: dict = {}
    res.update(bench_feature_writer(settings, n_events))
    res.update(bench_bse_encoder(settings, n_events))
    # The same volume spread over 10x more users (50 events each): every batch touches ~5x more
    # users, and the BSE's cost is per user touched (decode, update, encode a table).
    many = bench_bse_encoder(settings, n_events, events_per_user=50)
    res["bse_encoder_events_per_s_2000_users"] = many["bse_encoder_events_per_s"]
    res.update(bench_freshness(settings))
    reads = bench_item_reads(redis_url=settings.redis_url)
    res["feast_read_500_items_p99_ms"] = reads["feast_read_500_items_p99_ms"]
    res["fast_read_500_items_p99_ms"] = reads["fast_read_500_items_p99_ms"]
    res["fast_vs_feast_read_speedup"] = reads["feast_read_500_items_p99_ms"] / reads["fast_read_500_items_p99_ms"]
    res.update(bench_bse_bytes(settings))
    res["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}"
    res["n_events"] = n_events
    write_report(res, out_dir)
    return res


GOALS = {
    "feature_writer_events_per_s": (">=", 20_000),
    "bse_encoder_events_per_s": (">=", 20_000),
    "freshness_p99_ms": ("<", 500),
    "fast_vs_feast_read_speedup": (">=", 10),
    "bse_bytes_per_user_L10000": ("<=", 16_384),
}


def write_report(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stream.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    lines = ["# Stream benchmark", "",
             f"Machine: {res.get('machine', '?')}; {res.get('n_events', '?')} synthetic events per throughput run "
             "(200 users x 500 events unless the key says otherwise), batches of 5,000, real Kafka/Redis/Feast.", "",
             "| metric | value | goal | met |", "|---|---|---|---|"]
    for k, v in res.items():
        if not isinstance(v, (int, float)) or k == "n_events":
            continue
        goal = GOALS.get(k)
        met = ""
        if goal:
            op, target = goal
            met = "yes" if {"<": v < target, "<=": v <= target, ">=": v >= target}[op] else "**no**"
        lines.append(f"| {k} | {v:,.2f} | {op + ' ' + format(target, ',') if goal else ''} | {met} |")
    lines += ["", "- `feature_writer_events_per_s`: the writer (counters + outbox) while a `feature-publisher` process "
              "publishes to Feast at the same time, as deployed for high rates; `feature_writer_inline_publish_events_per_s`: "
              "one process doing both (`--publish inline`).",
              "- freshness: Kafka record timestamp -> readable in Feast online and the item blobs, for every 4th offset, "
              "with producer, writer and publisher in separate processes on the same two cores as Kafka and Redis.",
              "- `bse_bytes_per_user_L10000`: the largest of 8 users whose 10,000 behaviours come from 1 to 50 item clusters."]
    (out_dir / "stream.md").write_text("\n".join(lines) + "\n")
