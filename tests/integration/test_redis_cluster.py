"""Stream processors on a real Redis Cluster (three masters with a replica each) and a 6-partition
topic: several instances of one processor in one consumer group, a third instance joining
mid-stream (rebalance) and one SIGKILLed mid-stream (its partitions move to the others), and the
end state equal to a from-scratch computation: no event lost, none applied twice.

Every key a processor writes for partition p carries p's hash tag (features/keys.py KeyLayout),
so each partition's state and stored offsets commit in one MULTI/EXEC on one master; the readers
used for the checks find a user's keys with the producers' murmur2 partitioner and sum the
per-partition popularity shards, as serving does.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time

import pytest

from features.bse import BseKeys, RedisBseStore
from features.keys import KeyLayout, PopularityKeys
from pipelines.produce import produce_events
from pipelines.stream.popularity import WEIGHTS, PopularityHandler
from recstream.errors import StackError
from recstream.redis_io import redis_client
from services.inputs import PopularItems, RedisInputs, top_of_shards
from recstream.kafka_io import group_assignment
from tests.integration.procs import N_EVENTS, finish, spawn_processor, stream_100k, wait_for, wait_until
from tests.integration.test_exactly_once import EMB_SPEC, MAX_SEQ_LEN, _assert_same_state, _expected, _version

pytestmark = pytest.mark.integration

RECENT_ITEMS_MAX = 200  # Settings.recent_items_max's default, which the spawned processors use
# The events arrive over this long (plus however long the third member takes to join: the second
# half waits for it), so that members join and die while they flow.
STREAM_S = 40.0


class _PacedProducer(threading.Thread):
    """Produces the events evenly over `duration_s` (one producer, keyed by user id as always),
    holding at index `gate_at` until `gate` is set, so that what the test does before setting it
    happens with events still to come; `sent` counts what was handed to the producer so far."""

    def __init__(self, events, settings, duration_s: float, gate_at: int):
        super().__init__(daemon=True)
        self.events, self.settings, self.duration_s, self.gate_at = events, settings, duration_s, gate_at
        self.gate = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def _paced(self):
        t0, per_event_s = time.monotonic(), self.duration_s / len(self.events)
        for i, e in enumerate(self.events):
            if i == self.gate_at:
                waited = time.monotonic()
                if not self.gate.wait(timeout=300):
                    raise TimeoutError("the test never opened the gate")
                t0 += time.monotonic() - waited
            if i % 500 == 0:
                time.sleep(max(0.0, t0 + i * per_event_s - time.monotonic()))
            self.sent = i + 1
            yield e

    def run(self) -> None:
        try:
            produce_events(self._paced(), self.settings, progress=False)
        except BaseException as e:  # re-raised by the test after join()
            self.error = e


def _spawn(settings, processor: str):
    extra = ("--embeddings", EMB_SPEC, "--max-seq-len", str(MAX_SEQ_LEN)) if processor == "bse-encoder" else ()
    return spawn_processor(settings, processor, *extra)


def _progress(settings, processor: str):
    """() -> records applied so far (the offsets stored with the state, summed over partitions)."""
    from pipelines.stream.bse_encoder import BseEncoderHandler

    layout = KeyLayout.from_settings(settings)
    handler = (PopularityHandler(redis_client(settings.redis_url), layout) if processor == "popularity" else
               BseEncoderHandler(RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix, layout=layout)))
    return lambda: sum(handler.stored_offsets(settings.events_topic).values())


def _applied_by(output: str, processor: str) -> int:
    """Events a stopped instance reports it applied (`recstream process` prints it on exit)."""
    found = re.findall(rf"{processor}: applied (\d+) events", output)
    assert found, output[-3000:]
    return int(found[-1])


def _check_popularity(settings, events) -> None:
    layout = KeyLayout.from_settings(settings)
    keys = PopularityKeys(layout)
    r = redis_client(settings.redis_url, decode_responses=True)
    pop: dict[str, float] = {}
    seen: dict[str, set[str]] = {}
    last_ts: dict[str, dict[str, int]] = {}
    for e in events:
        w = WEIGHTS[e.type]
        if w > 0:
            pop[e.item_id] = pop.get(e.item_id, 0.0) + w
        if e.type.value != "impression":
            seen.setdefault(e.user_id, set()).add(e.item_id)
            items = last_ts.setdefault(e.user_id, {})
            items[e.item_id] = max(items.get(e.item_id, e.ts), e.ts)
    # every shard summed (exact: the weights are binary fractions), then the readers' top-k
    got = {}
    for shard in keys.popular_shards:
        for item, score in r.zrange(shard, 0, -1, withscores=True):
            got[item] = got.get(item, 0.0) + score
    assert got == pop
    top = top_of_shards(r, keys.popular_shards, 50)
    assert [s for _, s in top] == sorted(pop.values(), reverse=True)[:50]
    assert all(pop[i] == s for i, s in top)
    # serving's readers, on the cluster client and the layout from the settings
    assert PopularItems(r, settings.redis_prefix, pool_size=50, layout=layout).popular(50) == top
    inputs = RedisInputs(redis_client(settings.redis_url), settings.redis_prefix, layout=layout)
    some_user = events[0].user_id
    assert inputs.seen(some_user, sorted(seen[some_user]) + ["never-seen"]).tolist() == [True] * len(seen[some_user]) + [False]
    for user, items in seen.items():
        assert r.smembers(keys.seen(user)) == items, f"seen set of {user}"
        newest = dict(sorted(last_ts[user].items(), key=lambda kv: kv[1], reverse=True)[:RECENT_ITEMS_MAX])
        assert {i: int(s) for i, s in r.zrange(keys.recent(user), 0, -1, withscores=True)} == newest, user


def _check_bse(settings, events) -> None:
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix, versions=[_version()],
                                   max_seq_len=MAX_SEQ_LEN, layout=KeyLayout.from_settings(settings))
    users = sorted({e.user_id for e in events})
    assert sorted(store.users()) == sorted({e.user_id for e in events if e.is_positive})
    ref = _expected(events)
    _assert_same_state(store, ref, users)
    # serving's readers find each user's keys with the producers' partitioner
    import numpy as np

    from models.sdim_hash import SdimConfig
    from services.bse_lookup import BseLookup

    layout = KeyLayout.from_settings(settings)
    inputs = RedisInputs(redis_client(settings.redis_url), settings.redis_prefix, layout=layout)
    sdim = SdimConfig(dim=_version().shape[2])
    lookup = BseLookup(settings.redis_url, settings.redis_prefix, {"base": sdim}, partitions=layout.partitions)
    for u in users[:20]:
        assert inputs.history(u, 50) == ref.sequence(u, last_n=50)
        np.testing.assert_array_equal(inputs.bse_tables(u, "base", sdim), ref.tables([u], _version().name)[0])
    np.testing.assert_array_equal(lookup.tables(users, "base"), ref.tables(users, _version().name))


@pytest.mark.parametrize("processor", ["popularity", "bse-encoder"])
def test_instances_join_and_die_mid_stream_on_redis_cluster_end_state_exact(cluster_settings, processor):
    """The 100,000 events arrive over STREAM_S seconds, the second half only once a third member
    holds partitions. Two instances start; the third is started once 3% is applied (the group
    rebalances over three while events flow: a processor takes 5-40 s to start and join on a
    loaded 2-core machine); once 10% more is applied after it joined (and at least 60%), one of
    the first two is SIGKILLed (its partitions move after the session timeout). The survivors must
    finish the stream with the state of a from-scratch computation."""
    s = cluster_settings
    events = stream_100k()
    progress = _progress(s, processor)
    group = f"recstream.{processor}"
    a, b = _spawn(s, processor), _spawn(s, processor)
    c = None
    producer = _PacedProducer(events, s, STREAM_S, gate_at=N_EVENTS // 2)
    producer.start()
    try:
        wait_for(progress, int(N_EVENTS * 0.03), a, timeout_s=120)
        c = _spawn(s, processor)
        wait_until(lambda: len(group_assignment(s.kafka_bootstrap, group, s.events_topic)) == 3,
                   "three members hold partitions", timeout_s=120)
        joined_at, produced_at_join = progress(), producer.sent
        producer.gate.set()
        wait_for(progress, max(int(N_EVENTS * 0.6), joined_at + N_EVENTS // 10), b, timeout_s=120)
        a.kill()  # SIGKILL: no revoke, no flush, no commit
        killed_at, produced_at_kill = progress(), producer.sent
        a.wait(timeout=10)
        t0 = time.monotonic()
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        wait_for(progress, N_EVENTS, b, timeout_s=180)
        takeover_s = time.monotonic() - t0
        for p in (b, c):
            p.terminate()
        applied_b, applied_c = (_applied_by(finish(p, timeout_s=60), processor) for p in (b, c))
    finally:
        for p in (a, b, c):
            if p is not None and p.poll() is None:
                p.kill()
    # both changes of membership happened while events were still arriving
    assert produced_at_join < N_EVENTS and produced_at_kill < N_EVENTS, (produced_at_join, produced_at_kill)
    assert joined_at < N_EVENTS and killed_at < N_EVENTS, (joined_at, killed_at)
    assert applied_c > 0 and applied_b > 0, (applied_b, applied_c)
    print(f"{processor}: third instance joined at {joined_at} applied ({produced_at_join} produced), SIGKILL at "
          f"{killed_at} applied ({produced_at_kill} produced) of {N_EVENTS}; survivors applied {applied_b} + "
          f"{applied_c}; the rest done {takeover_s:.1f} s after the kill")
    if processor == "popularity":
        _check_popularity(s, events)
    else:
        _check_bse(s, events)


def _tolerant(progress):
    """progress(), or -1 while the cluster has no master for a slot (a failover in progress)."""
    import redis

    from pipelines.stream.base import _TRANSIENT

    def read() -> int:
        try:
            return progress()
        except (*_TRANSIENT, redis.exceptions.RedisClusterException):
            return -1

    return read


def _node_offsets(port: int, settings, partitions: list[int]) -> dict[int, int]:
    """The bse-encoder's stored offsets of `partitions` as the node on `port` holds them."""
    import redis

    r = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    keys = BseKeys(KeyLayout.from_settings(settings))
    out = {}
    for p in partitions:
        v = r.hget(keys.off("bse-encoder", p), keys.field((settings.events_topic, p)))
        out[p] = int(v) if v is not None else 0
    r.close()
    return out


@contextlib.contextmanager
def _two_encoders_and_a_victim(s, redis_cluster):
    """Two bse-encoder instances, both holding partitions before any event arrives (a member
    joining after a failover would seek to the stored offsets on its assignment, and the rewind
    the failover tests are about would go unseen); yields (the port of the master holding the
    most partitions' state, those partitions, its replica's port, the two processes). Afterwards
    the processes are killed and the cluster is whole again for the tests after: the replica
    resumed if a test left it paused, the old master restarted (it rejoins as a replica)."""
    victim, parts = redis_cluster.master_holding_most(KeyLayout.from_settings(s).tags())  # position = partition
    replica = redis_cluster.replica_of(victim)
    procs = (_spawn(s, "bse-encoder"), _spawn(s, "bse-encoder"))
    try:
        wait_until(lambda: len(group_assignment(s.kafka_bootstrap, "recstream.bse-encoder", s.events_topic)) == 2,
                   "two members hold partitions", timeout_s=120)
        yield victim, parts, replica, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        redis_cluster.resume(replica)
        redis_cluster.restart(victim)
        redis_cluster.wait_healthy()


def test_master_killed_under_load_replica_promoted_end_state_exact(cluster_settings, redis_cluster):
    """Two bse-encoder instances over 100,000 events; at 40% the master holding most of this test's
    partitions is SIGKILLed while its replica is behind: the replica is paused (SIGSTOP), the
    master drops its replication link (CLIENT KILL TYPE replica) and goes on writing for 0.6 s that
    the replica never receives. The replica promotes itself after the cluster-node-timeout. State and stored offsets were replicated in the same MULTI/EXEC or script,
    so they fell back together: the processors find the stored offsets older than their position,
    rewind there, and the end state equals a from-scratch computation."""
    s = cluster_settings
    events = stream_100k()
    progress = _tolerant(_progress(s, "bse-encoder"))
    with _two_encoders_and_a_victim(s, redis_cluster) as (victim, parts, replica, (a, b)):
        produce_events(events, s, progress=False)
        wait_for(progress, int(N_EVENTS * 0.4), a, timeout_s=180)
        redis_cluster.pause(replica)  # it cannot reconnect and resynchronise meanwhile
        redis_cluster.drop_replicas(victim)
        time.sleep(0.6)  # well below cluster-node-timeout: the replica is not itself declared failed
        before = _node_offsets(victim, s, parts)
        redis_cluster.kill(victim)
        redis_cluster.resume(replica)
        t0 = time.monotonic()
        wait_until(lambda: redis_cluster.role(replica) == "master", "the replica promoted", timeout_s=60)
        promoted_s = time.monotonic() - t0
        after = _node_offsets(replica, s, parts)
        wait_for(progress, N_EVENTS, a, timeout_s=240)
        for p in (a, b):
            p.terminate()
        outputs = [finish(p, timeout_s=60) for p in (a, b)]
    fell_back = sum(before[p] - after[p] for p in parts)
    rewinds = sum(o.count("state restored older than the consumer position; rewound") for o in outputs)
    print(f"failover: master :{victim} (partitions {parts}) SIGKILLed at {sum(before.values())} of its records "
          f"applied; replica promoted in {promoted_s:.1f} s holding {sum(after.values())}: {fell_back} records "
          f"fell back, {rewinds} rewinds")
    assert all(after[p] <= before[p] for p in parts), (before, after)
    _check_bse(s, events)
    # the replica was behind, and the processors saw it
    assert fell_back > 0 and rewinds >= 1, (before, after, rewinds, [o[-3000:] for o in outputs])


def test_feature_writer_instances_on_redis_cluster_match_the_oracle(cluster_settings):
    """Two feature-writer instances and one feature-publisher (to Feast's online store in its
    redis_cluster mode and to the item blobs; one publisher, as the module docstring of
    pipelines/stream/feature_writer.py asks of a deployment with several writers: two publishers can
    land one item's values in either order) over 30,000 events of every type (ratings, likes,
    purchases, genres and categories, which the 100,000-event stream of the other tests lacks); at
    half the stream one writer is SIGKILLed. Item counters are sharded per partition (every partition updates an item), users'
    counters live in their partition: the features computed from the counters and the published
    item blobs must equal the oracle's from the raw events."""
    from tests.builders import mixed_events

    s = cluster_settings
    events = mixed_events(30_000, n_users=100, n_items=2000, seed=5)
    n_events = len(events)
    produce_events(events, s, progress=False)
    layout = KeyLayout.from_settings(s)
    from pipelines.stream.feature_writer import FeatureWriterHandler

    writer = FeatureWriterHandler(redis_client(s.redis_url, decode_responses=True), layout)  # reads its offsets
    progress = lambda: sum(writer.stored_offsets(s.events_topic).values())  # noqa: E731
    a, b = (spawn_processor(s, "feature-writer", "--publish", "separate") for _ in range(2))
    publisher = spawn_processor(s, "feature-publisher")
    try:
        wait_for(progress, n_events // 2, a, timeout_s=180)
        a.kill()
        killed_at = progress()
        a.wait(timeout=10)
        wait_for(progress, n_events, b, timeout_s=240)
        for p in (b, publisher):  # the publisher drains the outbox on a clean stop
            p.terminate()
            finish(p, timeout_s=120)
    finally:
        for p in (a, b, publisher):
            if p.poll() is None:
                p.kill()
    assert killed_at < n_events
    pub = check_features(s, events)
    assert not any(pub.r.hlen(pub.keys.dirty("online", e, t)) for t in layout.tags() for e in ("u", "i"))


def check_features(settings, events):
    """The feature-writer's counters (as the publisher computes features from them, event times
    included), Feast's online rows and the item blobs all equal the oracle's from the raw events.
    Returns the publisher used to read them."""
    import numpy as np

    from features.feast_repo import repo_for_settings
    from features.item_features import RedisItemFeatures
    from features.repo.definitions import ITEM_FEATURES, USER_FEATURES
    from pipelines.stream.feature_publisher import FeaturePublisher
    from tests.feature_oracle import item_frame, user_frame
    from tests.integration.test_feature_writer import _assert_frames_match

    s = settings
    exp_users, exp_items = user_frame(events), item_frame(events)
    pub = FeaturePublisher(redis_client(s.redis_url, decode_responses=True), KeyLayout.from_settings(s))
    udf, idf = pub.compute(list(exp_users["user_id"]), list(exp_items["item_id"]))
    for df, exp in ((udf, exp_users), (idf, exp_items)):
        df["event_timestamp"] = df["event_timestamp"].astype("int64") // 1_000_000
        assert (df["event_timestamp"].to_numpy() == exp["event_timestamp"].to_numpy()).all()
    _assert_frames_match(udf, exp_users, "user_id", USER_FEATURES)
    _assert_frames_match(idf, exp_items, "item_id", ITEM_FEATURES)
    repo = repo_for_settings(s)
    _assert_frames_match(repo.online_user_features(list(exp_users["user_id"])), exp_users, "user_id", USER_FEATURES)
    _assert_frames_match(repo.online_item_features(list(exp_items["item_id"])), exp_items, "item_id", ITEM_FEATURES)
    fast = RedisItemFeatures.from_url(s.redis_url, prefix=s.redis_prefix).read(list(exp_items["item_id"]))
    np.testing.assert_allclose(fast, exp_items[list(ITEM_FEATURES)].to_numpy(dtype=np.float32), rtol=1e-5)
    return pub


def test_a_processor_refuses_a_topic_with_another_partition_count_than_the_layout(cluster_settings):
    """Readers locate a user's keys with topic_partitions; a processor whose topic has another
    partition count would write where no reader looks, so it stops at start with both numbers."""
    s = cluster_settings.model_copy(update={"topic_partitions": 4})
    out = finish(spawn_processor(s, "popularity", "--max-idle-s", "1"), timeout_s=120, rc=StackError.exit_code)
    assert f"topic {s.events_topic} has 6 partitions" in out and "topic_partitions=4" in out, out[-2000:]


def test_master_killed_before_its_replica_saw_any_of_a_partition_state_is_rebuilt(cluster_settings, redis_cluster):
    """The replica of the master holding most of this test's partitions is paused and cut off
    before the first event, so when that master is SIGKILLed the promoted replica holds nothing
    of those partitions, not even their stored offsets. The processors must not take that for
    fresh partitions (they would go on from their position with the state lost): they read each
    such partition again from where they began it, and the end state equals a from-scratch one."""
    s = cluster_settings
    events = stream_100k()[:20_000]
    progress = _tolerant(_progress(s, "bse-encoder"))
    with _two_encoders_and_a_victim(s, redis_cluster) as (victim, parts, replica, (a, b)):
        redis_cluster.pause(replica)
        redis_cluster.drop_replicas(victim)
        produce_events(events, s, progress=False)
        # every victim partition has state on the master and none on its replica; kill soon (a
        # replica cut off for over 10 cluster-node-timeouts would not stand for election)
        wait_until(lambda: min(_node_offsets(victim, s, parts).values()) > 0, "state on the master", timeout_s=60)
        before = _node_offsets(victim, s, parts)
        redis_cluster.kill(victim)
        redis_cluster.resume(replica)
        wait_until(lambda: redis_cluster.role(replica) == "master", "the replica promoted", timeout_s=60)
        after = _node_offsets(replica, s, parts)
        wait_for(progress, len(events), a, timeout_s=240)
        for p in (a, b):
            p.terminate()
        outputs = [finish(p, timeout_s=60) for p in (a, b)]
    rewinds = sum(o.count("state restored older than the consumer position; rewound") for o in outputs)
    print(f"failover before any replication: master :{victim} (partitions {parts}) SIGKILLed holding {before}; "
          f"the promoted replica held {after}; {rewinds} rewinds")
    assert all(v > 0 for v in before.values()) and not any(after.values()), (before, after)
    assert rewinds >= 1, [o[-3000:] for o in outputs]
    _check_bse(s, events)
