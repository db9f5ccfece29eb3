"""The Kafka failover drill: one broker of three SIGKILLed mid-stream and restarted.

Events stream at a fixed rate through the real processors (popularity, feature-writer and
bse-encoder, each its own `recstream process` OS process) while the serving impression logger
(services/impression_log.py) logs served slates at its own rate; at `kill_at_fraction` of the
stream the broker that leads the most partitions of the events topic is SIGKILLed (no controlled
shutdown: its leaderships move only once the controller fences it), and restarted `down_s`
later. Producers are idempotent with acks=all and the topics have replication factor 3 and
min.insync.replicas 2, so every acknowledged record is on two brokers when its producer hears of
it, and the controller elects a new leader only from the in-sync replicas.

What is counted, against what was acknowledged rather than what the components say of
themselves:

- events: every event acknowledged must be in the log once (the log is read back whole), and
  every event in the log must be applied once: the feature-writer's per-user and per-item
  counters and the popularity scores are compared with a from-scratch computation over the log
  (each event the drill makes counts once in exactly one counter, so a counter's difference is a
  number of events), and every positive event is one entry of its user's behaviour sequence in
  the bse-encoder (kept whole: benchmarks/scale.py `sequence_errors`). Lost = acknowledged and
  missing from the log, plus the most entries missing from any processor's state; double-applied
  = the most entries above the from-scratch ones, plus duplicates in the log.
- impressions: records the logger accepted, the acknowledgements its producer received, and the
  distinct request ids read back from the topic.
- errors: delivery failures a producer reported, processors that exited with an error, and
  impressions the logger dropped.

Writes `reports/drill_kafka.json` (flat keys `kafka_drill_*`) and `reports/drill_kafka.md`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.proc_stats import stop_processes
from deploy.local import LocalStack
from features.bse import RedisBseStore
from features.keys import PopularityKeys
from pipelines.stream.bse_encoder import BseEncoderHandler
from pipelines.stream.feature_writer import FeatureKeys, FeatureWriterHandler
from pipelines.stream.popularity import WEIGHTS, PopularityHandler
from recstream.errors import StackError
from recstream.events import Event, EventType, ImpressionLog, SlateItem
from recstream.kafka_io import ensure_topics, make_bulk_producer
from recstream.settings import Settings

log = logging.getLogger(__name__)

PROCESSORS = ("popularity", "feature-writer", "bse-encoder")
# Each of these counts once in exactly one feature-writer counter (an impression as an
# impression, a click or a view as a click, a like as a like; purchases and high ratings, which
# count twice, are left out), so a counter's difference from the from-scratch one is a number of
# events.
_TYPES = (EventType.impression, EventType.click, EventType.view, EventType.like)
_TYPE_WEIGHTS = (4, 3, 2, 1)
_COUNTED_AS = {EventType.impression: "imp", EventType.click: "clk", EventType.view: "clk", EventType.like: "lik"}
_T0_MS = 1_760_000_000_000  # fixed event times: the drill's events are the same on every run


@dataclass(frozen=True)
class KafkaDrillConfig:
    """One drill run. Defaults: a 30 s stream, the broker killed 9 s in and down for 10 s."""

    events: int = 60_000
    events_per_s: int = 2_000
    impressions_per_s: int = 200  # for as long as the events stream
    users: int = 500
    items: int = 2_000
    partitions: int = 6
    kill_at_fraction: float = 0.3  # of the events produced when the broker is killed
    down_s: float = 10.0  # how long the killed broker stays down
    catch_up_timeout_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("events", "events_per_s", "impressions_per_s", "users", "items", "partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if not 0.0 < self.kill_at_fraction < 1.0:
            raise ValueError(f"kill_at_fraction ({self.kill_at_fraction}) must be in (0, 1)")
        if self.down_s < 0:
            raise ValueError(f"down_s ({self.down_s}) must be >= 0")

    @property
    def stream_s(self) -> float:
        return self.events / self.events_per_s


def drill_events(cfg: KafkaDrillConfig) -> list[Event]:
    """The drill's events, the same on every run: users and items drawn at random, one second of
    event time apart per user so the hour buckets spread over a few days."""
    rng = random.Random(cfg.seed)
    out = []
    for n in range(cfg.events):
        u = rng.randrange(cfg.users)
        out.append(Event(event_id=f"d{cfg.seed}-{n}", user_id=f"u{u}", item_id=f"i{rng.randrange(cfg.items)}",
                         type=rng.choices(_TYPES, _TYPE_WEIGHTS)[0], ts=_T0_MS + n * 1000))
    return out


class _Paced:
    """Calls `send(k)` for k = 0..n-1 at `per_s` per second from a thread (an open loop: a stalled
    Kafka does not slow the offered rate, records queue in the producer instead)."""

    def __init__(self, n: int, per_s: int, send, name: str):
        self.n, self.per_s, self.send = n, per_s, send
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "_Paced":
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            while self.sent < self.n:
                due = min(self.n, int((time.monotonic() - t0) * self.per_s) + 1)
                while self.sent < due:
                    self.send(self.sent)
                    self.sent += 1
                time.sleep(0.005)
        except BaseException as e:  # reported as an error of the run, never swallowed
            self.error = e

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"{self._thread.name}: still sending after {timeout_s} s ({self.sent} of {self.n})")


class _EventProducer:
    """The events producer: idempotent, acks=all; every acknowledgement and failure recorded."""

    def __init__(self, s: Settings, events: list[Event]):
        self.s, self.events = s, events
        self.p = make_bulk_producer(s, **{"client.id": "recstream-drill-events"})
        self.acked: set[str] = set()
        self.failed: list[str] = []
        self.ack_times: list[float] = []

    def _delivered(self, eid: str, err) -> None:
        if err is None:
            self.acked.add(eid)
            self.ack_times.append(time.monotonic())
        else:
            self.failed.append(f"{eid}: {err}")

    def send(self, k: int) -> None:
        e = self.events[k]
        while True:
            try:
                self.p.produce(self.s.events_topic, key=e.user_id.encode(), value=e.to_bytes(),
                               on_delivery=lambda err, _msg, eid=e.event_id: self._delivered(eid, err))
                break
            except BufferError:  # the local queue is full (a leader is being elected): wait for deliveries
                self.p.poll(0.05)
        self.p.poll(0)


def _impression(k: int, seed: int) -> ImpressionLog:
    rng = random.Random(seed * 1_000_003 + k)
    items = rng.sample(range(1000), 10)
    return ImpressionLog(request_id=f"drill-{seed}-{k}", user_id=f"u{rng.randrange(500)}", ts=_T0_MS + k,
                         variant="drill", model_versions={"ranker": "drill"}, timings_ms={"total": 1.0},
                         slate=[SlateItem(item_id=f"i{i}", position=p, score=1.0 / (p + 1), propensity=1.0)
                                for p, i in enumerate(items)])


def _metric(name: str, labels: dict | None = None) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _spawn(s: Settings, name: str, log_dir: Path, cfg: KafkaDrillConfig) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli", "process", name]
    if name == "feature-writer":
        # No publisher: the counters are what the drill checks, and publication prunes old buckets.
        args += ["--publish", "separate"]
    elif name == "bse-encoder":
        # every behaviour kept, so a stored sequence counts what was applied
        args += ["--embeddings", _embeddings(cfg), "--max-seq-len", str(cfg.events)]
    out = open(log_dir / f"{name}.log", "wb")
    return subprocess.Popen(args, env={**os.environ, **s.to_env()}, stdout=out, stderr=subprocess.STDOUT)


def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> leader broker id of `topic`."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p: pm.leader for p, pm in md.topics[topic].partitions.items()}


def _replication(bootstrap: str, topic: str) -> tuple[int, int]:
    """(fewest replicas of any partition, min.insync.replicas) of `topic`, as the brokers report them."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    # a topic just created may be listed before the broker answering has its partitions' metadata
    while not (parts := admin.list_topics(topic, timeout=10).topics[topic].partitions) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not parts:
        raise StackError(f"topic {topic}: no partition metadata from {bootstrap} after 30 s")
    rf = min(len(pm.replicas) for pm in parts.values())
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(timeout=10)
    return rf, int(cfg["min.insync.replicas"].value)


def _high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "recstream-drill-probe", "enable.auto.commit": False})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in range(partitions)}
    finally:
        c.close()


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Every record value of `topic` up to its current end."""
    from confluent_kafka import Consumer, TopicPartition

    ends = _high_watermarks(bootstrap, topic, partitions)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "recstream-drill-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    pos = {p: 0 for p in range(partitions)}
    out: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while any(pos[p] < ends[p] for p in pos):
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic}: at {pos} of {ends} after 120 s")
            for msg in c.consume(10_000, 1.0):
                if msg.error() is None:
                    out.append(msg.value())
                    pos[msg.partition()] = msg.offset() + 1
    finally:
        c.close()
    return out


def _counter_totals(r: redis.Redis, key: str) -> Counter:
    """kind ("imp"/"clk"/"lik") -> events counted in one feature-writer hash (its hour buckets)."""
    out: Counter = Counter()
    for f, v in r.hgetall(key).items():
        kind, _, hour = f.partition(":")
        if kind in ("imp", "clk", "lik") and hour.isdigit():
            out[kind] += int(v)
    return out


def _compare_state(r: redis.Redis, prefix: str, events: list[Event]) -> dict:
    """The processors' end state against a from-scratch computation over `events` (the log)."""
    fk, pk = FeatureKeys(prefix), PopularityKeys(prefix)
    want_u: dict[str, Counter] = defaultdict(Counter)
    want_i: dict[str, Counter] = defaultdict(Counter)
    want_pop: dict[str, float] = defaultdict(float)
    for e in events:
        want_u[e.user_id][_COUNTED_AS[e.type]] += 1
        want_i[e.item_id][_COUNTED_AS[e.type]] += 1
        if WEIGHTS[e.type] > 0:
            want_pop[e.item_id] += WEIGHTS[e.type]
    missing, extra = {}, {}
    for side, key_of, want in (("user", fk.user, want_u), ("item", fk.item, want_i)):
        missing[side] = extra[side] = 0
        for entity, counts in want.items():
            have = _counter_totals(r, key_of(entity))
            for kind in ("imp", "clk", "lik"):
                missing[side] += max(0, counts[kind] - have[kind])
                extra[side] += max(0, have[kind] - counts[kind])
    have_pop = {k: float(v) for k, v in r.zrange(pk.popular, 0, -1, withscores=True)}
    # Weights are multiples of 1/2, so the sums are exact in floating point whatever the order.
    pop_wrong = sum(1 for i in set(want_pop) | set(have_pop) if want_pop.get(i, 0.0) != have_pop.get(i, 0.0))
    # Each event counts in one user hash and one item hash: the worse side is the event count.
    return {"missing": max(missing.values()), "extra": max(extra.values()), "popularity_items_wrong": pop_wrong}


def _embeddings(cfg: KafkaDrillConfig) -> str:
    return f"random:{cfg.items}:{cfg.seed}"


def _bse_errors(s: Settings, cfg: KafkaDrillConfig, events: list[Event]) -> dict:
    from benchmarks.scale import count_bse_errors

    return count_bse_errors(s, events, _embeddings(cfg), cfg.events)


def _handlers(s: Settings, r: redis.Redis) -> dict:
    """processor -> its handler on the drill's Redis, read for `stored_offsets` only (the offsets
    stored with its state: partition -> next offset)."""
    return {"popularity": PopularityHandler(r, s.redis_prefix), "feature-writer": FeatureWriterHandler(r, s.redis_prefix),
            # the BSE store's blobs are binary: a client of its own
            "bse-encoder": BseEncoderHandler(RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix))}


def run_drill(stack: LocalStack, home: Path, cfg: KafkaDrillConfig = KafkaDrillConfig(), tag: str = "drill") -> dict:
    """Run the drill on a running multi-broker `stack` (its Redis holds the state, under prefix
    `tag`) and return the flat `kafka_drill_*` results.

    Raises:
        StackError: the stack has fewer than 3 brokers (one of them dying must not stop acks=all).
    """
    if stack.config.kafka_brokers < 3:
        raise StackError(f"the Kafka drill needs a stack of 3 or more brokers, this one has {stack.config.kafka_brokers}")
    from services.impression_log import ImpressionLogger

    bootstrap = stack.bootstrap_servers()
    s = Settings(kafka_bootstrap=bootstrap, redis_url=stack.config.redis_url, home=home, events_topic=f"{tag}.events",
                 dlq_topic=f"{tag}.events.dlq", impressions_topic=f"{tag}.impressions",
                 topic_partitions=cfg.partitions, redis_prefix=tag)
    log_dir = Path(stack.dir) / f"{tag}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(s)
    rf, isr = _replication(bootstrap, s.events_topic)
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    handlers = _handlers(s, r)
    events = drill_events(cfg)
    n_impressions = int(cfg.impressions_per_s * cfg.stream_s)

    procs = {name: _spawn(s, name, log_dir, cfg) for name in PROCESSORS}
    producer = _EventProducer(s, events)
    # As serving runs it: its own librdkafka producer (idempotent, acks=all), a bounded buffer.
    impressions = ImpressionLogger(bootstrap, s.impressions_topic, buffer_max=10_000)
    logged_before = _metric("recstream_impression_log_sent_total")
    dropped_before = {r_: _metric("recstream_impression_log_dropped_total", {"reason": r_})
                      for r_ in ("buffer_full", "send_error", "shutdown")}
    accepted = [0]

    def log_impression(k: int) -> None:
        accepted[0] += impressions.log(_impression(k, cfg.seed))

    t_start = time.monotonic()
    ev_thread = _Paced(cfg.events, cfg.events_per_s, producer.send, "drill-events").start()
    imp_thread = _Paced(n_impressions, cfg.impressions_per_s, log_impression, "drill-impressions").start()
    try:
        while ev_thread.sent < cfg.kill_at_fraction * cfg.events and ev_thread.error is None:
            time.sleep(0.05)
        leaders = _leaders(bootstrap, s.events_topic)
        victim = Counter(leaders.values()).most_common(1)[0][0]
        led = sum(1 for b in leaders.values() if b == victim)
        log.info("drill: SIGKILL broker %d (leads %d of %d partitions of %s) after %d events", victim, led,
                 len(leaders), s.events_topic, ev_thread.sent)
        applied = lambda: min(sum(h.stored_offsets(s.events_topic).values()) for h in handlers.values())  # noqa: E731
        t_kill, applied_at_kill = time.monotonic(), applied()
        stack.kill_broker(victim)
        time.sleep(cfg.down_s)
        t_restart, applied_at_restart = time.monotonic(), applied()
        stack.start_broker(victim, wait=True)
        restart_ready_s = time.monotonic() - t_restart
        log.info("drill: broker %d back after %.1f s down, ready %.1f s after its start", victim, t_restart - t_kill,
                 restart_ready_s)
        ev_thread.join(cfg.stream_s * 4 + 120)
        imp_thread.join(cfg.stream_s * 4 + 120)
        left = producer.p.flush(120)
        impressions.close()
        produce_s = time.monotonic() - t_start

        # Catch-up: every processor's stored offsets reach the log end.
        ends = _high_watermarks(bootstrap, s.events_topic, cfg.partitions)
        t_catch = time.monotonic()
        while True:
            behind = {n: sum(max(0, ends[p] - h.stored_offsets(s.events_topic).get(p, 0)) for p in ends)
                      for n, h in handlers.items()}
            if not any(behind.values()):
                break
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if dead or time.monotonic() - t_catch > cfg.catch_up_timeout_s:
                log.error("drill: processors behind the log end %s (exited: %s)", behind, dead)
                break
            time.sleep(0.2)
        catch_up_s = time.monotonic() - t_catch
    finally:
        rcs = dict(zip(procs, stop_processes(list(procs.values()))))
    errors_in = [e for e in (ev_thread.error, imp_thread.error) if e is not None]

    # Read back and compare.
    in_log = [Event.model_validate_json(v) for v in _read_all(bootstrap, s.events_topic, cfg.partitions)]
    ids = Counter(e.event_id for e in in_log)
    unique = list({e.event_id: e for e in in_log}.values())
    state = _compare_state(r, tag, unique)
    bse = _bse_errors(s, cfg, unique)
    imp_ids = Counter(json.loads(v)["request_id"] for v in _read_all(bootstrap, s.impressions_topic, cfg.partitions))
    imp_acked = int(_metric("recstream_impression_log_sent_total") - logged_before)
    imp_dropped = {k: int(_metric("recstream_impression_log_dropped_total", {"reason": k}) - v)
                   for k, v in dropped_before.items()}
    acked_missing = len(producer.acked - set(ids))
    gaps = [(b - a, a) for a, b in zip(producer.ack_times, producer.ack_times[1:])]
    longest_gap_s, gap_start = max(gaps, default=(0.0, t_kill))
    failed_processors = {n: rc for n, rc in rcs.items() if rc != 0}
    res = {
        "kafka_drill_brokers": stack.config.kafka_brokers,
        "kafka_drill_replication_factor": rf,
        "kafka_drill_min_insync_replicas": isr,
        "kafka_drill_partitions": cfg.partitions,
        "kafka_drill_killed_broker": victim,
        "kafka_drill_killed_broker_led_partitions": led,
        "kafka_drill_broker_down_s": round(t_restart - t_kill, 2),
        "kafka_drill_restart_ready_s": round(restart_ready_s, 2),
        "kafka_drill_events": cfg.events,
        "kafka_drill_events_per_s": cfg.events_per_s,
        "kafka_drill_events_acknowledged": len(producer.acked),
        "kafka_drill_events_unacknowledged_at_end": left,
        "kafka_drill_events_in_log": len(ids),
        "kafka_drill_duplicates_in_log": sum(c - 1 for c in ids.values()),
        "kafka_drill_acknowledged_missing_from_log": acked_missing,
        "kafka_drill_applied_missing": state["missing"],
        "kafka_drill_applied_extra": state["extra"],
        "kafka_drill_popularity_items_wrong": state["popularity_items_wrong"],
        "kafka_drill_bse_missing": bse["lost"],
        "kafka_drill_bse_extra": bse["double"],
        "kafka_drill_bse_state_exact": bse["in_order"] and bse["tables_equal"],
        "kafka_drill_lost_events": acked_missing + max(state["missing"], bse["lost"]),
        "kafka_drill_double_applied": sum(c - 1 for c in ids.values()) + max(state["extra"], bse["double"]),
        "kafka_drill_produce_longest_ack_gap_s": round(longest_gap_s, 2),
        "kafka_drill_produce_longest_ack_gap_began_s_after_kill": round(gap_start - t_kill, 2),
        # Both keep going while a broker is down: writes acknowledged, and events applied by the
        # slower of the two processors, between the SIGKILL and the restart.
        "kafka_drill_events_acknowledged_while_broker_down": sum(1 for t in producer.ack_times if t_kill <= t < t_restart),
        "kafka_drill_events_applied_while_broker_down": applied_at_restart - applied_at_kill,
        "kafka_drill_produce_s": round(produce_s, 2),
        "kafka_drill_catch_up_s": round(catch_up_s, 2),
        "kafka_drill_impressions": n_impressions,
        "kafka_drill_impressions_accepted": accepted[0],
        "kafka_drill_impressions_acknowledged": imp_acked,
        "kafka_drill_impressions_in_log": len(imp_ids),
        "kafka_drill_impressions_duplicated": sum(c - 1 for c in imp_ids.values()),
        "kafka_drill_impressions_lost": max(0, accepted[0] - len(imp_ids)),
        "kafka_drill_impressions_dropped": sum(imp_dropped.values()),
        "kafka_drill_errors": len(producer.failed) + len(failed_processors) + len(errors_in) + sum(imp_dropped.values()),
    }
    if producer.failed or failed_processors or errors_in:
        log.error("drill errors: delivery %s; processors %s (logs in %s); threads %s", producer.failed[:5],
                  failed_processors, log_dir, errors_in)
    return res


def write_report(res: dict, cfg: KafkaDrillConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drill_kafka.json").write_text(json.dumps(res, indent=2) + "\n")
    r = res
    md = f"""# Kafka failover drill

`recstream drill kafka`: a {r['kafka_drill_brokers']}-broker KRaft stack on loopback (each node broker +
controller, a 3-voter quorum), topics with replication factor {r['kafka_drill_replication_factor']} and
min.insync.replicas {r['kafka_drill_min_insync_replicas']}, {r['kafka_drill_partitions']} partitions; producers
idempotent with acks=all. {cfg.events:,} events at {cfg.events_per_s:,}/s through the popularity,
feature-writer and bse-encoder processors (own OS processes), impressions at {cfg.impressions_per_s}/s through the serving
impression logger. After {cfg.kill_at_fraction:.0%} of the events, broker {r['kafka_drill_killed_broker']} (leader of
{r['kafka_drill_killed_broker_led_partitions']} events partitions) was SIGKILLed, left down
{r['kafka_drill_broker_down_s']} s and restarted (ready {r['kafka_drill_restart_ready_s']} s after its start).

| | count |
|---|---|
| events produced / acknowledged / in the log | {r['kafka_drill_events']:,} / {r['kafka_drill_events_acknowledged']:,} / {r['kafka_drill_events_in_log']:,} |
| acknowledged but missing from the log | {r['kafka_drill_acknowledged_missing_from_log']} |
| duplicates in the log | {r['kafka_drill_duplicates_in_log']} |
| events missing from the feature-writer's counters (vs from scratch) | {r['kafka_drill_applied_missing']} |
| events counted more than once there | {r['kafka_drill_applied_extra']} |
| popularity items whose score differs from scratch | {r['kafka_drill_popularity_items_wrong']} |
| positive events missing from the bse-encoder's sequences / there more than once | {r['kafka_drill_bse_missing']} / {r['kafka_drill_bse_extra']} |
| bse-encoder sequences and SDIM tables equal to from scratch | {'yes' if r['kafka_drill_bse_state_exact'] else '**no**'} |
| **lost events** | **{r['kafka_drill_lost_events']}** |
| **double-applied events** | **{r['kafka_drill_double_applied']}** |
| impressions logged / acknowledged / in the log | {r['kafka_drill_impressions_accepted']:,} / {r['kafka_drill_impressions_acknowledged']:,} / {r['kafka_drill_impressions_in_log']:,} |
| **impressions lost** (accepted, not in the log) | **{r['kafka_drill_impressions_lost']}** |
| **errors** (delivery failures, processor failures, dropped impressions) | **{r['kafka_drill_errors']}** |

While the broker was down, {r['kafka_drill_events_acknowledged_while_broker_down']:,} events were
acknowledged and {r['kafka_drill_events_applied_while_broker_down']:,} applied (by the slower processor).
Longest gap between two event acknowledgements: {r['kafka_drill_produce_longest_ack_gap_s']} s, beginning
{r['kafka_drill_produce_longest_ack_gap_began_s_after_kill']} s after the kill (the restart began
{r['kafka_drill_broker_down_s']} s after it). Writes wait, they do not fail: every partition has a replica on each broker, and acks=all
waits for the in-sync replicas, both while the controller has not yet fenced the dead broker and
while the restarted one rejoins them (on a busy 2-core machine its start-up competes with
everything else); records wait in the producers' queues meanwhile.
Processors caught up with the log end
{r['kafka_drill_catch_up_s']} s after the last event was acknowledged.

Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other work; Python {platform.python_version()}.
"""
    (out_dir / "drill_kafka.md").write_text(md)
