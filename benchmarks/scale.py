"""Scale-out benchmark: stream processors on a Redis Cluster, 1, 2 and 4 instances per processor,
and a Redis master failover under load (`recstream bench stream --cluster`).

The benchmark starts its own Redis Cluster (deploy/local/redis_cluster.py: three masters with one
replica each, on loopback) and uses the stack's Kafka with a topic of `partitions` partitions per
run. Each instance is its own `recstream process` OS process (its own interpreter and GIL, as
deployed), all in one consumer group.

Throughput is measured from the backlog: the instances hold their partitions before the first
event is produced, the events are produced at once, and the rate counts only what is applied
after the producer finished (so its CPU is not in the window), up to the last event applied.
Every run is checked against a from-scratch computation, counting events rather than trusting the
processors: each positive event is one entry in one user's behaviour sequence (the bse-encoder
keeps the whole sequence: `max_seq_len` is above every user's count), so per user the entries
missing from the stored sequence are lost events and the entries above the expected count are
double-applied ones; the SDIM tables must also equal the from-scratch ones.

The failover run: two bse-encoder instances; when `failover_at_fraction` of the events is
applied, the replica of the master holding the most partitions is paused (SIGSTOP), the master
drops its replication link and goes on writing for a moment the replica never receives, then is
SIGKILLed; the replica promotes itself. State and stored offsets replicate in one MULTI/EXEC, so
they fall back together and the processors rewind: `failover_records_fell_back` counts what the
promoted replica lacked, and the lost / double-applied counts must still be 0.

Writes `reports/scale.json` (flat keys `cluster_events_per_s_<n>`, `failover_lost_events`,
`failover_double_applied`, ...) and `reports/scale.md`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.proc_stats import cpu_s, pids_by_role, stop_processes
from deploy.local.redis_cluster import LocalRedisCluster
from features.bse import Behaviour, BseKeys, InMemoryBseStore, RedisBseStore, TableVersion
from features.keys import KeyLayout
from pipelines.data.synthetic import SyntheticConfig, generate_events
from pipelines.produce import produce_events
from pipelines.stream.bse_encoder import BseEncoderHandler, load_table_version
from pipelines.stream.popularity import PopularityHandler
from recstream.events import Event
from recstream.kafka_io import ensure_topics, group_assignment
from recstream.redis_io import redis_client
from recstream.settings import Settings

log = logging.getLogger(__name__)

PROCESSORS = ("bse-encoder", "popularity")
ROLES = ("instances", "redis", "kafka", "bench")  # process roles whose CPU a run counts


@dataclass(frozen=True)
class ScaleConfig:
    """Defaults: 100,000 events of 1,000 users, an 8-partition topic (1, 2 and 4 instances get
    equal shares), the failover at 40% of the events applied."""

    events: int = 100_000
    users: int = 1_000
    items: int = 3_000
    partitions: int = 8
    instances: tuple[int, ...] = (1, 2, 4)
    processors: tuple[str, ...] = PROCESSORS
    embeddings: str = "random:3000:0"
    batch_max_records: int = 2_000
    repeats: int = 3  # runs per instance count; the median is reported
    failover_at_fraction: float = 0.4
    join_timeout_s: float = 180.0
    catch_up_timeout_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("events", "users", "items", "partitions", "batch_max_records", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if not self.instances or min(self.instances) < 1 or max(self.instances) > self.partitions:
            raise ValueError(f"instances {self.instances} must be within 1..partitions ({self.partitions})")
        unknown = set(self.processors) - set(PROCESSORS)
        if unknown or not self.processors:
            raise ValueError(f"processors {self.processors}: each must be one of {PROCESSORS}")
        if not 0.0 < self.failover_at_fraction < 1.0:
            raise ValueError(f"failover_at_fraction ({self.failover_at_fraction}) must be in (0, 1)")

    @property
    def max_seq_len(self) -> int:
        # above any user's positive events: a stored sequence is then a full count of applications
        return self.events


def scale_events(cfg: ScaleConfig) -> list[Event]:
    per_user = max(20, cfg.events // cfg.users + 10)
    syn = SyntheticConfig(n_users=cfg.users, n_items=cfg.items, seq_len=per_user, short_len=min(50, per_user),
                          seed=cfg.seed)
    return list(itertools.islice(generate_events(syn), cfg.events))


# ---------------------------------------------------------------------------------------------
# processes and their CPU


def _spawn(s: Settings, processor: str, cfg: ScaleConfig, log_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli", "process", processor, "--batch-max-records", str(cfg.batch_max_records)]
    if processor == "bse-encoder":
        args += ["--embeddings", cfg.embeddings, "--max-seq-len", str(cfg.max_seq_len)]
    return subprocess.Popen(args, env={**os.environ, **s.to_env()}, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT)


def _progress(s: Settings, processor: str):
    """() -> records applied (the offsets stored with the state, summed), or -1 while a slot has
    no master (a failover in progress)."""
    import redis

    layout = KeyLayout.from_settings(s)
    handler = (PopularityHandler(redis_client(s.redis_url), layout) if processor == "popularity" else
               BseEncoderHandler(RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, layout=layout)))

    def progress() -> int:
        try:
            return sum(handler.stored_offsets(s.events_topic).values())
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException,
                redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError):
            return -1

    return progress


def _wait_members(s: Settings, group: str, n: int, procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{group}: an instance exited while joining (rc {dead})")
        assigned = group_assignment(s.kafka_bootstrap, group, s.events_topic)
        if len(assigned) == n and sum(len(v) for v in assigned.values()) == s.topic_partitions:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{group}: {n} members did not all hold partitions in {timeout_s} s")


# ---------------------------------------------------------------------------------------------
# checks against a from-scratch computation


def sequence_errors(events: list[Event], sequence_of, stored_users) -> dict:
    """Lost and double-applied events, from what `sequence_of(user)` returns for every user and the
    users the store lists. Per user and item: lost = expected entries missing, double = entries
    above the expected count (a user the events never name counts all of theirs as double);
    `in_order` holds when every stored sequence is exactly the expected one."""
    want: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e.is_positive:
            want[e.user_id].append(e.item_id)
    lost = double = 0
    in_order = True
    for user, items in want.items():
        have = sequence_of(user)
        in_order &= have == items
        exp, got = Counter(items), Counter(have)
        lost += sum(max(0, c - got[i]) for i, c in exp.items())
        double += sum(max(0, c - exp[i]) for i, c in got.items())
    stray = set(stored_users) - set(want)
    double += sum(len(sequence_of(u)) for u in stray)
    return {"lost": lost, "double": double, "in_order": in_order and not stray}


def count_bse_errors(s: Settings, events: list[Event], embeddings: str, max_seq_len: int) -> dict:
    """sequence_errors over the stored sequences of a bse-encoder run with `--embeddings
    embeddings` and its default model version, and whether its SDIM tables equal the from-scratch
    ones (built with the table version that command builds)."""
    version = load_table_version(embeddings, TableVersion.model_version)
    store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, versions=[version], max_seq_len=max_seq_len,
                                   layout=KeyLayout.from_settings(s))
    out = sequence_errors(events, store.sequence, list(store.users()))
    ref = InMemoryBseStore(versions=[version], max_seq_len=max_seq_len)
    ref.apply_batch([Behaviour(e.user_id, e.item_id) for e in events if e.is_positive])
    users = sorted({e.user_id for e in events if e.is_positive})
    out["tables_equal"] = bool(np.array_equal(store.tables(users, version.name), ref.tables(users, version.name)))
    return out


def check_popularity(s: Settings, events: list[Event]) -> bool:
    """The summed popularity shards and every user's seen set equal the from-scratch ones."""
    from features.keys import PopularityKeys
    from pipelines.stream.popularity import WEIGHTS

    keys = PopularityKeys(KeyLayout.from_settings(s))
    r = redis_client(s.redis_url, decode_responses=True)
    pop: dict[str, float] = defaultdict(float)
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if WEIGHTS[e.type] > 0:
            pop[e.item_id] += WEIGHTS[e.type]
        if e.type.value != "impression":
            seen[e.user_id].add(e.item_id)
    got: dict[str, float] = defaultdict(float)
    for shard in keys.popular_shards:
        for item, score in r.zrange(shard, 0, -1, withscores=True):
            got[item] += score  # exact: the weights are binary fractions
    return dict(got) == dict(pop) and all(r.smembers(keys.seen(u)) == items for u, items in seen.items())


# ---------------------------------------------------------------------------------------------
# runs


def _namespace(base: Settings, partitions: int) -> Settings:
    """Settings for one measurement: its own topics (created here) and key prefix on the shared servers."""
    tag = f"scale{uuid.uuid4().hex[:6]}"
    s = base.model_copy(update={"events_topic": f"{tag}.events", "dlq_topic": f"{tag}.events.dlq",
                                "impressions_topic": f"{tag}.impressions", "redis_prefix": tag,
                                "topic_partitions": partitions})
    ensure_topics(s)
    return s


def _delete_topics(s: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    for topic, fut in admin.delete_topics([s.events_topic, s.dlq_topic, s.impressions_topic], operation_timeout=30).items():
        try:
            fut.result(timeout=30)
        except Exception as e:  # leftovers are harmless; never fail a finished run on them
            log.warning("scale bench: could not delete topic %s: %s", topic, e)


def measure_instances(base: Settings, cluster: LocalRedisCluster, cfg: ScaleConfig, processor: str, n: int,
                      events: list[Event], log_dir: Path) -> dict:
    """events/s of `n` instances of `processor` over the backlog, CPU per role, and the check."""
    s = _namespace(base, cfg.partitions)
    procs = [_spawn(s, processor, cfg, log_dir / f"{processor}-{n}-{k}.log") for k in range(n)]
    progress = _progress(s, processor)
    roles = {"instances": [p.pid for p in procs], "redis": [nd.proc.pid for nd in cluster.live()],
             "kafka": pids_by_role({"kafka": ("kafka.Kafka",)})["kafka"], "bench": [os.getpid()]}
    try:
        _wait_members(s, f"recstream.{processor}", n, procs, cfg.join_timeout_s)
        produce_events(events, s, progress=False)
        t0, applied0 = time.perf_counter(), max(0, progress())
        cpu0 = {role: cpu_s(pids) for role, pids in roles.items()}
        deadline = time.monotonic() + cfg.catch_up_timeout_s
        while (done := progress()) < len(events):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{processor} x{n}: {done} of {len(events)} applied (logs in {log_dir})")
            time.sleep(0.02)
        span_s = time.perf_counter() - t0
        cpu = {role: cpu_s(pids) - cpu0[role] for role, pids in roles.items()}
    finally:
        rcs = stop_processes(procs)
    if any(rcs):
        raise RuntimeError(f"{processor} x{n}: instances exited with {rcs} (logs in {log_dir})")
    counted = len(events) - applied0
    out = {"events_per_s": counted / span_s, "events_counted": counted, "seconds": span_s,
           "cpu_s_per_1k_events": {role: 1000 * c / counted for role, c in cpu.items()},
           "cores_busy": {role: c / span_s for role, c in cpu.items()}}
    if processor == "bse-encoder":
        check = count_bse_errors(s, events, cfg.embeddings, cfg.max_seq_len)
        out.update(lost=check["lost"], double=check["double"],
                   exact=check["in_order"] and check["tables_equal"] and not check["lost"] + check["double"])
    else:
        out.update(exact=check_popularity(s, events))
    _delete_topics(s)
    log.info("scale bench: %s x%d: %.0f events/s over %d events (%.1f s), exact %s", processor, n,
             out["events_per_s"], counted, span_s, out["exact"])
    return out


def measure_failover(base: Settings, cluster: LocalRedisCluster, cfg: ScaleConfig, events: list[Event],
                     log_dir: Path) -> dict:
    """Two bse-encoder instances; a master SIGKILLed while its replica is behind (module docstring)."""
    s = _namespace(base, cfg.partitions)
    victim, parts = cluster.master_holding_most(KeyLayout.from_settings(s).tags())  # position = partition
    replica = cluster.replica_of(victim)
    logs = [log_dir / f"failover-{k}.log" for k in range(2)]
    procs = [_spawn(s, "bse-encoder", cfg, path) for path in logs]
    progress = _progress(s, "bse-encoder")
    try:
        _wait_members(s, "recstream.bse-encoder", 2, procs, cfg.join_timeout_s)
        produce_events(events, s, progress=False)
        deadline = time.monotonic() + cfg.catch_up_timeout_s
        while progress() < cfg.failover_at_fraction * len(events):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"failover: {progress()} applied before the kill (logs in {log_dir})")
            time.sleep(0.01)
        cluster.pause(replica)  # it cannot reconnect and resynchronise meanwhile
        cluster.drop_replicas(victim)
        time.sleep(0.6)  # writes the replica never receives; well below cluster-node-timeout
        before = _node_offsets(victim, s, parts)
        applied_at_kill = progress()
        cluster.kill(victim)
        cluster.resume(replica)
        t_kill = time.monotonic()
        while cluster.role(replica) != "master":
            if time.monotonic() - t_kill > 60:
                raise RuntimeError(f"failover: the replica :{replica} was not promoted in 60 s")
            time.sleep(0.05)
        promoted_s = time.monotonic() - t_kill
        after = _node_offsets(replica, s, parts)
        while progress() < len(events):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"failover: {progress()} of {len(events)} applied (logs in {log_dir})")
            time.sleep(0.05)
        caught_up_s = time.monotonic() - t_kill
    finally:
        rcs = stop_processes(procs)
        cluster.restart(victim)  # rejoins as the new master's replica
        cluster.wait_healthy()
    outputs = [path.read_text(errors="replace") for path in logs]
    rewinds = sum(o.count("state restored older than the consumer position; rewound") for o in outputs)
    check = count_bse_errors(s, events, cfg.embeddings, cfg.max_seq_len)
    _delete_topics(s)
    return {
        "failover_lost_events": check["lost"],
        "failover_double_applied": check["double"],
        "failover_end_state_exact": check["in_order"] and check["tables_equal"],
        "failover_records_fell_back": sum(before[p] - after[p] for p in parts),
        "failover_rewinds": rewinds,
        "failover_killed_master_partitions": len(parts),
        "failover_applied_at_kill": applied_at_kill,
        "failover_replica_promoted_s": round(promoted_s, 2),
        "failover_caught_up_s": round(caught_up_s, 2),
        "failover_instance_errors": sum(1 for rc in rcs if rc != 0),
    }


def _node_offsets(port: int, s: Settings, partitions: list[int]) -> dict[int, int]:
    """The bse-encoder's stored offsets of `partitions` as the node on `port` holds them."""
    import redis

    r = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    keys = BseKeys(KeyLayout.from_settings(s))
    try:
        return {p: int(r.hget(keys.off("bse-encoder", p), keys.field((s.events_topic, p))) or 0) for p in partitions}
    finally:
        r.close()


def key_name(processor: str) -> str:
    """The report's key stem of a processor: the bse-encoder's are the issue's flat keys."""
    return "cluster" if processor == "bse-encoder" else f"cluster_{processor.replace('-', '_')}"


def run(settings: Settings, out_dir: Path = Path("reports"), cfg: ScaleConfig = ScaleConfig(),
        state_dir: Path | None = None) -> dict:
    """Start a local Redis Cluster, measure every processor at every instance count and the
    failover, write the report; the cluster is removed afterwards (its logs kept on failure)."""
    import shutil

    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="recstream-scale-"))
    cluster = LocalRedisCluster(state_dir / "redis-cluster")
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    events = scale_events(cfg)
    ok = False
    if threading.current_thread() is threading.main_thread():
        # a SIGTERM (timeout, Ctrl-C in a wrapper) unwinds through the finally below: the
        # cluster's nodes run in sessions of their own and would outlive the benchmark
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cluster.up()
        base = settings.model_copy(update={"redis_url": cluster.url, "redis_key_layout": "partitioned"})
        res: dict = {}
        for processor in cfg.processors:
            name = key_name(processor)
            for n in cfg.instances:
                runs = [measure_instances(base, cluster, cfg, processor, n, events, log_dir) for _ in range(cfg.repeats)]
                # the median run stands for the count (its CPU split too); the spread is reported
                runs.sort(key=lambda m: m["events_per_s"])
                m = runs[len(runs) // 2]
                res[f"{name}_events_per_s_{n}"] = m["events_per_s"]
                res[f"{name}_events_per_s_min_{n}"] = runs[0]["events_per_s"]
                res[f"{name}_events_per_s_max_{n}"] = runs[-1]["events_per_s"]
                res[f"{name}_exact_{n}"] = all(r["exact"] for r in runs)
                if "lost" in m:
                    res[f"{name}_lost_events_{n}"] = sum(r["lost"] for r in runs)
                    res[f"{name}_double_applied_{n}"] = sum(r["double"] for r in runs)
                for role, v in m["cpu_s_per_1k_events"].items():
                    res[f"{name}_cpu_s_per_1k_events_{role}_{n}"] = v
                for role, v in m["cores_busy"].items():
                    res[f"{name}_cores_busy_{role}_{n}"] = v
            lo, hi = min(cfg.instances), max(cfg.instances)
            res[f"{name}_speedup_{hi}_vs_{lo}"] = res[f"{name}_events_per_s_{hi}"] / res[f"{name}_events_per_s_{lo}"]
            # what the machine's cores allow at the CPU per event measured with the most instances
            per_event_s = sum(res[f"{name}_cpu_s_per_1k_events_{role}_{hi}"] for role in ROLES) / 1000
            res[f"{name}_cores_bound_events_per_s"] = (os.cpu_count() or 1) / per_event_s
        res.update(measure_failover(base, cluster, cfg, events, log_dir))
        res.update({"events": cfg.events, "users": cfg.users, "partitions": cfg.partitions, "repeats": cfg.repeats,
                    "batch_max_records": cfg.batch_max_records, "processors": list(cfg.processors),
                    "instances": list(cfg.instances),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} at the end"})
        write_report(res, out_dir)
        ok = True
        return res
    finally:
        cluster.down()
        if ok:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            log.error("scale bench failed: the cluster's and the instances' logs are kept in %s", state_dir)


def write_report(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    ns, reps = res["instances"], res.get("repeats", 1)
    lines = ["# Scale-out benchmark: processors on a Redis Cluster", "",
             f"`recstream bench stream --cluster`. Machine: {res['machine']}. A local Redis Cluster (3 masters, "
             f"1 replica each, AOF fsync always), the stack's Kafka, a {res['partitions']}-partition topic; "
             f"{res['events']:,} synthetic events of {res['users']:,} users; each instance its own `recstream process` "
             f"OS process in one consumer group, batches of {res['batch_max_records']:,}. events/s counts the backlog "
             f"applied after the producer finished, to the last event: the median of {reps} runs (their min-max in "
             "brackets).", "",
             "| processor | " + " | ".join(f"{n} instance{'s' if n > 1 else ''}" for n in ns) + " | ratio | exact |",
             "|---|" + "---:|" * len(ns) + "---:|---|"]
    for processor in res["processors"]:
        name = key_name(processor)
        rates = " | ".join(f"{res[f'{name}_events_per_s_{n}']:,.0f} ({res[f'{name}_events_per_s_min_{n}']:,.0f}-"
                           f"{res[f'{name}_events_per_s_max_{n}']:,.0f})" for n in ns)
        exact = all(res[f"{name}_exact_{n}"] for n in ns)
        lines.append(f"| {processor} | {rates} | {res[f'{name}_speedup_{max(ns)}_vs_{min(ns)}']:.2f}x | "
                     f"{'yes' if exact else '**no**'} |")
    lines += ["", "Where the time goes: CPU seconds per 1,000 events by process role (instances together), "
              "and cores busy over the window (2 cores in all).", "",
              "| processor | instances | instances CPU s/1k | Redis (6 nodes) | Kafka | bench (poller) | cores busy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for processor in res["processors"]:
        name = key_name(processor)
        for n in ns:
            cpu = {role: res[f"{name}_cpu_s_per_1k_events_{role}_{n}"] for role in ROLES}
            busy = sum(res[f"{name}_cores_busy_{role}_{n}"] for role in ROLES)
            lines.append(f"| {processor} | {n} | {cpu['instances']:.3f} | {cpu['redis']:.3f} | {cpu['kafka']:.3f} | "
                         f"{cpu['bench']:.3f} | {busy:.2f} |")
    hi = max(ns)
    lines += [""] + [
        f"- {processor}: with {hi} instances, {res[f'{key_name(processor)}_events_per_s_{hi}']:,.0f} events/s is "
        f"{res[f'{key_name(processor)}_events_per_s_{hi}'] / res[f'{key_name(processor)}_cores_bound_events_per_s']:.0%} "
        f"of the {res[f'{key_name(processor)}_cores_bound_events_per_s']:,.0f} events/s that the machine's cores allow at "
        "the CPU per event measured (all roles together)." for processor in res["processors"]]
    lines += ["- An instance's CPU per event stays flat as instances are added (the partitioned layout adds no "
              "per-event work, and the instances share nothing but Redis and Kafka), so the ratio is bounded by the "
              "cores: one instance with its Redis work already keeps about one core busy (cores busy above), and "
              "instances beyond the second share the same cores."]
    lines += ["", "## Redis master failover under load (bse-encoder, 2 instances)", "",
              "| | value |", "|---|---|",
              f"| partitions whose master was SIGKILLed | {res['failover_killed_master_partitions']} |",
              f"| records applied when killed | {res['failover_applied_at_kill']:,} |",
              f"| replica promoted after | {res['failover_replica_promoted_s']} s |",
              f"| records the promoted replica lacked (state and offsets fell back together) | "
              f"{res['failover_records_fell_back']:,} |",
              f"| rewinds the instances logged | {res['failover_rewinds']} |",
              f"| all events applied, after the kill | {res['failover_caught_up_s']} s |",
              f"| **lost events** | **{res['failover_lost_events']}** |",
              f"| **double-applied events** | **{res['failover_double_applied']}** |",
              f"| end state equal to a from-scratch computation | {'yes' if res['failover_end_state_exact'] else '**no**'} |",
              f"| instances that exited with an error | {res['failover_instance_errors']} |", ""]
    (out_dir / "scale.md").write_text("\n".join(lines) + "\n")
