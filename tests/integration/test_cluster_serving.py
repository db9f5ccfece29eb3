"""The rest of the platform on a real Redis Cluster (partitioned key layout, 6-partition topic):
the deployed processor commands (popularity, bse-encoder on the served ranker's artefact,
feature-writer with `--offline-history` publishing to Feast's online store in its redis_cluster
mode) write the cluster; `recstream bse rebuild` builds a second ranker version's tables from the
stored sequences; the real Ray Serve application (services/app.py) answers from all of it.

tests/integration/test_redis_cluster.py checks the processors and the readers one by one; this
file checks that the served answer is built from what they wrote: every stage undegraded, the
user's history, long-term interest (BSE tables of the served version, and of the rebuilt one),
seen items filtered, user features through Feast and item feature blobs equal to a from-scratch
computation, the impression log written, and a user the cluster knows nothing of answered from
the sum of the popularity shards.

The replay tool (pipelines/replay) reads only Kafka and model artefacts, never Redis, so it has
nothing to do with the cluster.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import defaultdict

import httpx
import numpy as np
import pandas as pd
import pytest

from features.bse import Behaviour, InMemoryBseStore, RedisBseStore
from features.keys import KeyLayout
from features.vectors import (ITEM_RAW_NAMES, ITEM_VECTOR_NAMES, USER_RAW_NAMES, USER_VECTOR_NAMES, item_feature_matrix,
                              user_vectors_from_raw)
from pipelines.produce import produce_events
from pipelines.stream.bse_encoder import BseEncoderHandler, load_table_version
from pipelines.stream.feature_writer import FeatureWriterHandler
from pipelines.stream.popularity import WEIGHTS, PopularityHandler
from recstream.events import EventType
from recstream.redis_io import redis_client
from services.pipeline import assign_variant
from tests.builders import mixed_events
from tests.feature_oracle import by_entity, item_row, user_row
from tests.integration.kafka_utils import read_impression
from tests.integration.procs import env_for, finish, spawn_processor, wait_for
from tests.integration.scratch import scratch
from tests.integration.test_serving import _config, _deploy
from tests.serving_fixtures import save_stage_models

pytestmark = pytest.mark.integration

N_USERS, N_ITEMS, N_EVENTS = 240, 300, 4000
SERVED, REBUILT = "vf", "v1"  # vf: the bse-encoder's version (with dense features); v1: built by `bse rebuild`
COLD_K = 20  # the cold app's whole cascade: candidates = coarse cut = answer = the top COLD_K popular items


def _variant(version: str, share: float) -> dict:
    return {"share": share, **{stage: {"name": name, "version": version}
                               for stage, name in (("retrieval", "two_tower"), ("coarse", "hcn"), ("ranker", "ranker"))}}


def _run_processors(s, events) -> None:
    """The three processors as the deployment runs them (`recstream process ...`), side by side,
    until each has stored the offsets of every event, then stopped cleanly (the writer drains its
    offline history on the stop)."""
    layout = KeyLayout.from_settings(s)
    handlers = {"popularity": PopularityHandler(redis_client(s.redis_url), layout),
                "bse-encoder": BseEncoderHandler(RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, layout=layout)),
                "feature-writer": FeatureWriterHandler(redis_client(s.redis_url, decode_responses=True), layout)}
    # records applied: the offsets each stores with its state, summed over partitions
    progress = {name: (lambda h=h: sum(h.stored_offsets(s.events_topic).values())) for name, h in handlers.items()}
    args = {"popularity": (), "bse-encoder": ("--embeddings", f"artifact:ranker/{SERVED}", "--model-version", SERVED),
            "feature-writer": ("--offline-history",)}
    procs = {name: spawn_processor(s, name, *a) for name, a in args.items()}
    try:
        for name, p in procs.items():
            wait_for(progress[name], len(events), p, timeout_s=180)
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            finish(p, timeout_s=120)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def cluster_world(tmp_path_factory, stack_endpoints, redis_cluster, scratch_home, ray_serve):
    """Artefacts vf (served; its tables kept by the bse-encoder) and v1 (its tables built by `bse
    rebuild`), the stream's state on the cluster, and two apps on the session's Ray Serve:
    `cserve` (variants A: vf, B: v1) and `ccold` (its candidates are the top COLD_K popular items)."""
    from ray import serve

    root = tmp_path_factory.mktemp("artifacts")
    feats = {"n_user_feats": len(USER_VECTOR_NAMES), "n_item_feats": len(ITEM_VECTOR_NAMES)}
    save_stage_models(root, N_USERS, N_ITEMS, version=SERVED, seed=2, ranker_overrides=feats, hcn_overrides=feats,
                      feature_vectors={"user_vector_names": list(USER_VECTOR_NAMES),
                                       "item_vector_names": list(ITEM_VECTOR_NAMES), "source": "test"})
    save_stage_models(root, N_USERS, N_ITEMS, version=REBUILT, seed=0)
    with scratch(stack_endpoints, scratch_home, tag=f"cs{uuid.uuid4().hex[:8]}", redis_url=redis_cluster.url,
                 topic_partitions=6) as s, pytest.MonkeyPatch.context() as mp:
        assert s.redis_key_layout == "partitioned"
        mp.setenv("RECSTREAM_ARTIFACTS_DIR", str(root))  # what the processors' and the rebuild's `artifact:` read
        events = mixed_events(N_EVENTS, n_users=N_USERS, n_items=N_ITEMS, seed=9)
        produce_events(events, s, progress=False)
        _run_processors(s, events)
        rebuild = subprocess.run([sys.executable, "-m", "cli", "bse", "rebuild", "--model-version", REBUILT,
                                  "--embeddings", f"artifact:ranker/{REBUILT}", "--batch-users", "64"],
                                 env=env_for(s), capture_output=True, text=True, timeout=180)
        assert rebuild.returncode == 0, rebuild.stdout[-2000:] + rebuild.stderr[-3000:]
        world = {"root": root, "settings": s, "events": events, "rebuild_output": rebuild.stdout}
        main = _config(world, user_feature_source="feast", variants={"A": _variant(SERVED, 0.5), "B": _variant(REBUILT, 0.5)})
        cold = _config(world, user_feature_source="feast", variants={"A": _variant(SERVED, 1.0)}, ranker_deployment=False,
                       candidate_top_k=COLD_K, coarse_top_k=COLD_K, max_k=COLD_K, popular_merge_k=COLD_K)
        try:
            world["config"] = main
            world["main"] = _deploy(ray_serve, world, main, "cserve")
            world["cold"] = _deploy(ray_serve, world, cold, "ccold")
            yield world
        finally:
            for name in ("cserve", "ccold"):
                serve.delete(name)


# ---- from-scratch computations over the raw events ---------------------------------------------

def _history(events, user: str) -> list[str]:
    """The user's BSE sequence: positive events in stream order (one user's events share a partition)."""
    return [e.item_id for e in events if e.user_id == user and e.is_positive]


def _seen(events, user: str) -> set[str]:
    """What the popularity processor's seen set holds: the items of the user's events but impressions."""
    return {e.item_id for e in events if e.user_id == user and e.type is not EventType.impression}


def _popularity(events) -> dict[str, float]:
    pop: dict[str, float] = defaultdict(float)
    for e in events:
        if WEIGHTS[e.type] > 0:
            pop[e.item_id] += WEIGHTS[e.type]
    return pop


def _user_vector(events, user: str) -> np.ndarray:
    row = user_row([e for e in events if e.user_id == user])
    return user_vectors_from_raw(np.array([[row[n] for n in USER_RAW_NAMES]], dtype=np.float32))[0]


def _item_vectors(events, items: list[str]) -> np.ndarray:
    rows = by_entity(events, "item_id")
    return item_feature_matrix(np.array([[item_row(rows[i])[n] for n in ITEM_RAW_NAMES] for i in items], dtype=np.float32))


def _recommend(url: str, user: str, k: int, exclude: list[str] = ()) -> dict:
    resp = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": k, "exclude": list(exclude)}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _users_in(world, variant: str) -> list[str]:
    c = world["config"]
    return [u for u in sorted({e.user_id for e in world["events"]})
            if assign_variant(u, c.experiment_salt, c.variant_shares) == variant]


# ---- the tests ----------------------------------------------------------------------------------

def test_served_answer_uses_every_input_the_processors_wrote_on_the_cluster(cluster_world):
    """Variant A (ranker vf, dense features): the user with the longest history, one popular item
    it never touched excluded. Every stage and input undegraded; history, user features (Feast
    redis_cluster) and item features (blobs) equal the from-scratch values; seen and excluded
    items absent; the impression log written."""
    w, s = cluster_world, cluster_world["settings"]
    events = w["events"]
    user = max(_users_in(w, "A"), key=lambda u: (len(_history(events, u)), u))
    seen = _seen(events, user)
    pop = _popularity(events)
    exclude = [next(i for i in sorted(pop, key=lambda i: (-pop[i], i)) if i not in seen)]
    # the popular items the user touched would be merged into the candidates if seen filtering failed
    assert seen & set(sorted(pop, key=lambda i: -pop[i])[:50])

    body = _recommend(w["main"], user, 10, exclude)
    assert body["degraded"] is False, body["degraded_reasons"]
    assert body["variant"] == "A" and body["model_versions"] == {"retrieval": SERVED, "coarse": SERVED, "ranker": SERVED}
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 10 and not set(ids) & (seen | set(exclude)), set(ids) & (seen | set(exclude))

    log = read_impression(s.kafka_bootstrap, s.impressions_topic, body["request_id"])
    assert log["user_id"] == user and [x["item_id"] for x in log["slate"]] == ids
    f = log["features"]
    history, n = _history(events, user), w["config"].history_len
    assert f["long_term"] is True and f["history_len"] == min(len(history), n) > 0
    assert f["history_tail"] == history[-n:]
    want_user = _user_vector(events, user)
    assert want_user[-1] == 0  # the oracle has a row for the user: a wrong read would show as missing
    np.testing.assert_allclose(f["user"], want_user, atol=1e-5)
    np.testing.assert_allclose([f["items"][i] for i in ids], _item_vectors(events, ids), atol=1e-5)


def test_bse_rebuild_on_the_cluster_equals_the_encoders_tables_and_is_served(cluster_world):
    """`recstream bse rebuild` for v1 visited every partition's users and wrote each user's tables
    under the user's partition tag, equal to the tables an encoder maintaining v1 computes (and the
    encoder's own vf tables equal too); variant B (ranker v1) then serves with long-term interest."""
    w, s = cluster_world, cluster_world["settings"]
    events = w["events"]
    layout = KeyLayout.from_settings(s)
    users = sorted({e.user_id for e in events if e.is_positive})
    assert {layout.user_partition(u) for u in users} == set(range(s.topic_partitions))  # every partition has users
    n_positive = sum(e.is_positive for e in events)
    assert f"users={len(users)} behaviours={n_positive} " in w["rebuild_output"], w["rebuild_output"]

    rebuilt, served = load_table_version(f"artifact:ranker/{REBUILT}", REBUILT), load_table_version(
        f"artifact:ranker/{SERVED}", SERVED)
    ref = InMemoryBseStore(versions=[rebuilt, served])
    ref.apply_batch([Behaviour(e.user_id, e.item_id) for e in events if e.is_positive])
    store = RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, layout=layout)
    for tv in (rebuilt, served):
        np.testing.assert_array_equal(store.tables(users, tv), ref.tables(users, tv), err_msg=tv.name)
    r = redis_client(s.redis_url, decode_responses=True)
    keys = sorted(r.scan_iter(match=f"*{s.redis_prefix}*:bse:tab:{rebuilt.name}:*", count=1000))  # on every master
    assert keys == sorted(f"{layout.user_tag(u)}:bse:tab:{rebuilt.name}:{u}" for u in users)

    user = max(_users_in(w, "B"), key=lambda u: (len(_history(events, u)), u))
    body = _recommend(w["main"], user, 5)
    assert body["variant"] == "B" and body["model_versions"]["ranker"] == REBUILT
    assert body["degraded"] is False, body["degraded_reasons"]  # no bse:version_missing: the rebuild is read
    log = read_impression(s.kafka_bootstrap, s.impressions_topic, body["request_id"])
    assert log["features"]["long_term"] is True and log["features"]["history_len"] == len(_history(events, user))


def _top(pop: dict[str, float], k: int, banned: set[str]) -> tuple[set[str], set[str]]:
    """(items that must be in a top k of `pop` without `banned`, items that may be): ties at the
    cut go either way."""
    scores = {i: p for i, p in pop.items() if i not in banned}
    cut = sorted(scores.values(), reverse=True)[k - 1]
    return {i for i, p in scores.items() if p > cut}, {i for i, p in scores.items() if p >= cut}


def test_cold_and_known_users_get_the_summed_popularity_shards_less_what_they_saw(cluster_world):
    """App ccold takes its COLD_K candidates from the popular items only, so a user the cluster
    knows nothing of gets exactly the top COLD_K of the popularity summed over the six partitions'
    shards (no single shard's top would do), and a known user the top COLD_K of what it never
    touched (its seen set, read from its partition's tag, removes the rest). The main app answers
    the unknown user undegraded too."""
    w = cluster_world
    events, pop = w["events"], _popularity(w["events"])
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    body = _recommend(w["cold"], nobody, COLD_K)
    assert body["degraded"] is False, body["degraded_reasons"]
    got = {i["item_id"] for i in body["items"]}
    must, may = _top(pop, COLD_K, set())
    assert len(got) == COLD_K and must <= got <= may, (got - may, must - got)
    layout = KeyLayout.from_settings(w["settings"])
    r = redis_client(w["settings"].redis_url, decode_responses=True)
    assert all(not must <= set(r.zrevrange(f"{t}:pop", 0, COLD_K - 1)) for t in layout.tags())

    # the known user who touched the most of the top items: a failed seen filter would show them
    user = max(sorted({e.user_id for e in events}), key=lambda u: len(_seen(events, u) & may))
    seen = _seen(events, user)
    assert len(seen & may) >= 3
    body = _recommend(w["cold"], user, COLD_K)
    assert body["degraded"] is False, body["degraded_reasons"]
    got = {i["item_id"] for i in body["items"]}
    must, may = _top(pop, COLD_K, seen)
    assert len(got) == COLD_K and must <= got <= may, (got & seen, got - may, must - got)

    main = _recommend(w["main"], nobody, 5)
    assert main["degraded"] is False and len(main["items"]) == 5, main


def test_offline_history_on_the_cluster_has_a_row_per_entity_and_event_time(cluster_world):
    """The feature-writer's `--offline-history` (Feast's offline source) on the partitioned layout.
    Users: one row per user and distinct event time, each equal to the from-scratch features of the
    user's events up to then (a user's events all come through its partition, in order). Items:
    their events come through all six partitions, consumed out of step, and a row carries the time
    of the item's latest event over all shards, so a row can stand for a later time than the
    segment's (the module docstring of pipelines/stream/feature_publisher.py: exact for items only
    with events in time order); still no row twice, every row at one of the item's event times, and
    each item's latest row at its last event with the features of all its events."""
    from features.feast_repo import repo_for_settings
    from features.vectors import item_raw_from_frame, user_raw_from_frame

    w = cluster_world
    events = w["events"]
    data = repo_for_settings(w["settings"]).repo_dir / "data"
    for kind in ("user", "item"):
        df = pd.read_parquet(data / f"{kind}_stats.parquet")
        df["ts_ms"] = (df["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)  # any unit
        got = list(zip(df[f"{kind}_id"], df["ts_ms"]))
        want = {(getattr(e, f"{kind}_id"), e.ts) for e in events}
        assert len(got) == len(set(got)), f"{kind}: two offline rows for one entity and time"
        by = by_entity(events, f"{kind}_id")
        if kind == "user":
            assert set(got) == want
            oracle = pd.DataFrame([user_row([e for e in by[u] if e.ts <= ts]) for u, ts in got])
            np.testing.assert_allclose(user_raw_from_frame(df), user_raw_from_frame(oracle), rtol=1e-6, atol=1e-6)
        else:
            assert set(got) <= want
            last = df.sort_values("ts_ms").drop_duplicates("item_id", keep="last").sort_values("item_id")
            assert sorted(last["item_id"]) == sorted(by)
            assert list(last["ts_ms"]) == [max(e.ts for e in by[i]) for i in last["item_id"]]
            oracle = pd.DataFrame([item_row(by[i]) for i in last["item_id"]])
            np.testing.assert_allclose(item_raw_from_frame(last), item_raw_from_frame(oracle), rtol=1e-6, atol=1e-6)
            print(f"offline history: {len(got)} item rows for {len(want)} item event times")
