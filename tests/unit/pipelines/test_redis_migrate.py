"""The single -> partitioned key mapping of `recstream redis migrate`, family by family, and the
plan / refusal / copy logic on a small in-memory stand-in for Redis (SCAN, DUMP/RESTORE with
TTLs, hashes). The whole command on real servers: tests/integration/test_redis_migrate.py."""

from __future__ import annotations

import copy
import fnmatch

import pytest
from redis.crc import key_slot

from features.bse import BseKeys
from features.feast_repo import online_key_heads, project_for_prefix
from features.item_features import item_features_key
from features.keys import KeyLayout, PopularityKeys, offsets_key
from pipelines.redis_migrate import (KeyMapper, PROCESSORS, check_plan, glob_escape, make_plan, migrate,
                                     run_migration)
from pipelines.stream.feature_writer import FeatureKeys
from recstream.errors import MigrationRefused
from recstream.partitioning import partition_for
from recstream.settings import Settings

N = 6
SRC, DST = KeyLayout("rs"), KeyLayout("rs", N)
VERSION = "base+simhash-v1+q8"
# ids with the characters a naive split would trip on
USERS = ["u1", "user:with:colons", "ünï", "u{3}"]
ITEMS = ["i1", "item:x"]


def _mapper(source_prefix="rs", target=DST, versions=(VERSION,)) -> KeyMapper:
    return KeyMapper(source_prefix, target, versions, (project_for_prefix(source_prefix),
                                                       project_for_prefix(target.prefix)), online_key_heads())


def _to(mapper: KeyMapper, key: str | bytes) -> bytes:
    move = mapper.map_key(key.encode() if isinstance(key, str) else key)
    assert move is not None and move.target is not None, key
    return move.target


def _slot(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


@pytest.mark.parametrize("user", USERS)
def test_user_keys_go_to_the_users_partition_where_the_readers_look(user):
    """Each single-layout user key, as the processor wrote it, maps to the name the partitioned
    layout's builders give for that user (what readers and processors use), in its partition's slot."""
    m = _mapper()
    p = partition_for(user, N)
    pairs = [
        (PopularityKeys(SRC).seen(user), PopularityKeys(DST).seen(user)),
        (PopularityKeys(SRC).recent(user), PopularityKeys(DST).recent(user)),
        (FeatureKeys(SRC).user(user), FeatureKeys(DST).user(user)),
        (FeatureKeys(SRC).genres(user), FeatureKeys(DST).genres(user)),
        (BseKeys(SRC).seq(user), BseKeys(DST).seq(user)),
        (BseKeys(SRC).n(user), BseKeys(DST).n(user)),
        (BseKeys(SRC).tab(VERSION, user), BseKeys(DST).tab(VERSION, user)),
    ]
    for single, partitioned in pairs:
        got = _to(m, single)
        assert got == partitioned.encode(), single
        assert got.startswith(DST.tag(p).encode()) and _slot(got) == _slot(offsets_key(DST.tag(p), "x", "t"))


@pytest.mark.parametrize("item", ITEMS)
def test_item_shards_go_whole_into_partition_0s_shard_and_item_blobs_keep_their_names(item):
    m = _mapper()
    assert _to(m, PopularityKeys(SRC).popular) == PopularityKeys(DST).popular_shards[0].encode()
    assert _to(m, FeatureKeys(SRC).item(item)) == FeatureKeys(DST).item(item, DST.tag(0)).encode()
    assert _to(m, item_features_key("rs", item)) == item_features_key("rs", item).encode()


def test_outbox_and_freshness_marks_go_to_partition_0s_tag():
    m, sf, tf = _mapper(), FeatureKeys(SRC), FeatureKeys(DST)
    for target in ("online", "offline"):
        for ent in ("u", "i"):
            assert _to(m, sf.dirty(target, ent)) == tf.dirty(target, ent, DST.tag(0)).encode()
    assert _to(m, sf.fresh_marks) == tf.fresh_marks_at(DST.tag(0)).encode()
    # the publisher reads every tag's outbox: it finds these
    assert tf.dirty("online", "u", DST.tag(0)) in [tf.dirty("online", "u", t) for t in DST.tags()]


def test_offsets_are_split_field_by_field_into_each_partitions_hash():
    m = _mapper()
    for proc in ("popularity", "feature-writer"):
        move = m.map_key(offsets_key("rs", proc, "rs.events").encode())
        assert move.family.how == "offsets" and move.scope == "rs.events"
        for p in range(N):
            assert move.split(str(p).encode()) == (p, offsets_key(DST.tag(p), proc, "rs.events").encode())
    move = m.map_key(BseKeys(SRC).off("bse-encoder").encode())
    assert move.scope == "bse-encoder"
    for p in range(N):
        field = BseKeys.field(("topic.with.dots", p)).encode()
        assert move.split(field) == (p, BseKeys(DST).off("bse-encoder", p).encode())
    with pytest.raises(MigrationRefused, match=r"offset of partition 6, but the target layout has 6 partitions"):
        move.split(b"topic:6")


def test_versions_and_feast_rows_keep_their_names_staging_is_left_and_the_rest_is_unknown():
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    m = _mapper()
    assert _to(m, BseKeys(SRC).ver(VERSION)) == BseKeys(DST).ver(VERSION).encode()
    assert m.map_key(BseKeys(SRC).staging("w1", VERSION, "u1").encode()).family.how == "skip"
    row = _redis_key("recstream_rs", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="u:1")]))
    assert _to(m, row) == row
    # another prefix on the target: Feast's project follows it, the rest of the name does not change
    other = _mapper(target=KeyLayout("new", N))
    assert _to(other, row) == _redis_key("recstream_new", EntityKey(join_keys=["user_id"],
                                                                   entity_values=[Value(string_val="u:1")]))
    assert _to(other, "rs:seen:u1") == PopularityKeys(KeyLayout("new", N)).seen("u1").encode()
    for unknown in ("rs:zzz", "rs:bse:tab:unregistered+v:u1", "rs:seen:", "rs:pop:extra", "rs:offsets:mine:t"):
        assert m.map_key(unknown.encode()) is None, unknown
    assert m.map_key(b"rs:\xff\xfe") is None
    assert m.map_key(row[:-1] + b"x" + b"recstream_rs") is None  # its length field does not add up
    assert {f.processor for f in m.families()} == set(PROCESSORS)


def test_a_target_partitioned_layout_is_required():
    with pytest.raises(ValueError, match="must be partitioned"):
        KeyMapper("rs", KeyLayout("rs"))


def test_glob_escape():
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


# ---- plan and copy on an in-memory Redis -------------------------------------------------------


class _FakeRedis:
    """The few commands the migration uses: SCAN MATCH, HGETALL, pipelines of DUMP, PTTL, RESTORE,
    HSET, DELETE. Values are Python objects; a dump is a deep copy of one."""

    def __init__(self):
        self.data: dict[bytes, object] = {}
        self.ttl_ms: dict[bytes, int] = {}

    def set(self, key: str | bytes, value, ttl_ms: int | None = None):
        key = key.encode() if isinstance(key, str) else key
        self.data[key] = value
        if ttl_ms:
            self.ttl_ms[key] = ttl_ms

    def scan_iter(self, match: str, count: int | None = None):
        return iter([k for k in list(self.data) if fnmatch.fnmatchcase(k.decode("latin-1"), match)])

    def hgetall(self, key: bytes) -> dict:
        return dict(self.data.get(key, {}))

    def pipeline(self, transaction: bool = False):
        return _FakePipe(self)


class _FakePipe:
    def __init__(self, r: _FakeRedis):
        self.r, self.ops = r, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return lambda *a, **kw: self.ops.append((name, a, kw))

    def execute(self):
        out, r = [], self.r
        for name, a, kw in self.ops:
            if name == "dump":
                out.append(("payload", copy.deepcopy(r.data[a[0]])) if a[0] in r.data else None)
            elif name == "pttl":
                out.append(r.ttl_ms.get(a[0], -1) if a[0] in r.data else -2)
            elif name == "restore":
                key, ttl_ms, payload = a
                if key in r.data:
                    raise RuntimeError("BUSYKEY Target key name already exists.")
                r.set(key, copy.deepcopy(payload[1]), ttl_ms)
                out.append(True)
            elif name == "hset":
                r.data.setdefault(a[0], {}).update(kw["mapping"])
                out.append(len(kw["mapping"]))
            elif name == "delete":
                out.append(int(r.data.pop(a[0], None) is not None))
                r.ttl_ms.pop(a[0], None)
        self.ops = []
        return out


def _source() -> _FakeRedis:
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    r = _FakeRedis()
    sp, sf, sb = PopularityKeys(SRC), FeatureKeys(SRC), BseKeys(SRC)
    r.set(sp.popular, {"i1": 3.0, "item:x": 1.5})
    for u in USERS:
        r.set(sp.seen(u), {"i1"})
        r.set(sp.recent(u), {"i1": 1000})
        r.set(sf.user(u), {"clk:1": 2, "ts": 3_600_000})
        r.set(sf.genres(u), ["drama"])
        r.set(sb.seq(u), ["i1", "item:x"])
        r.set(sb.n(u), b"2")
        r.set(sb.tab(VERSION, u), b"blob")
        r.set(_redis_key("recstream_rs", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=u)])),
              {"f": b"v"}, ttl_ms=86_400_000)
    for i in ITEMS:
        r.set(sf.item(i), {"clk:1": 1, "ts": 3_600_000, "first": 3_600_000})
        r.set(item_features_key("rs", i), b"blob", ttl_ms=60_000)
    r.set(sf.dirty("online", "u"), {"u1": 3})
    r.set(sf.fresh_marks, ["100,1,2"])
    r.set(sb.ver(VERSION), {"hasher": "x"})
    r.set(sb.staging("w1", VERSION, "u1"), b"half-written", ttl_ms=600_000)
    r.set(offsets_key("rs", "popularity", "rs.events"), {b"0": b"10", b"4": b"7"})
    r.set(offsets_key("rs", "feature-writer", "rs.events"), {b"1": b"5"})
    r.set(sb.off("bse-encoder"), {b"rs.events:0": b"9", b"rs.events:5": b"3"})
    return r


def _plan(src, dst, processors=PROCESSORS):
    return make_plan(src, dst, _mapper(), processors, "recstream_rs", "recstream_rs")


def test_plan_counts_every_family_and_the_copy_places_every_key_with_its_ttl():
    src, dst = _source(), _FakeRedis()
    plan = _plan(src, dst)
    assert plan.n_unknown == 0 and plan.n_partitioned == 0 and not plan.target_existing
    assert plan.copy["popularity.seen"] == len(USERS) and plan.copy["feature-writer.item"] == len(ITEMS)
    assert plan.copy["feature-writer.feast"] == len(USERS) and plan.copy["bse-encoder.offsets"] == 1
    assert plan.skipped == {"bse-encoder.staging (transient)": 1}
    assert plan.offsets == {("popularity", "rs.events"): {0: 10, 4: 7}, ("feature-writer", "rs.events"): {1: 5},
                            ("bse-encoder", "bse-encoder"): {0: 9, 5: 3}}
    check_plan(plan, "src", "dst", overwrite=False)
    done = []
    res = run_migration(src, dst, _mapper(), plan, PROCESSORS, "recstream_rs", "recstream_rs", overwrite=False,
                        batch_keys=7, progress=done.append)
    assert sum(done) == plan.n_scanned == len(src.data)
    assert res.copied == plan.copy
    tp, tf, tb = PopularityKeys(DST), FeatureKeys(DST), BseKeys(DST)
    for u in USERS:
        assert dst.data[tp.seen(u).encode()] == {"i1"} and dst.data[tb.tab(VERSION, u).encode()] == b"blob"
        assert dst.data[tf.user(u).encode()] == src.data[FeatureKeys(SRC).user(u).encode()]
    assert dst.data[tp.popular_shards[0].encode()] == {"i1": 3.0, "item:x": 1.5}
    assert dst.ttl_ms[item_features_key("rs", "i1").encode()] == 60_000
    # offsets: each partition's field in its own tag's hash
    assert dst.data[offsets_key(DST.tag(4), "popularity", "rs.events").encode()] == {b"4": b"7"}
    assert dst.data[offsets_key(DST.tag(0), "popularity", "rs.events").encode()] == {b"0": b"10"}
    assert dst.data[tb.off("bse-encoder", 5).encode()] == {b"rs.events:5": b"3"}
    assert not any(b":bse:stage:" in k for k in dst.data)
    # every key the target holds is one of a known family (what the processors will read)
    assert len(dst.data) == sum(plan.copy.values()) - 3 + 5  # 3 offsets hashes became 5 (2 + 1 + 2 partitions)


def test_a_second_run_refuses_a_target_with_state_unless_overwrite():
    src, dst = _source(), _FakeRedis()
    run_migration(src, dst, _mapper(), _plan(src, dst), PROCESSORS, "recstream_rs", "recstream_rs", overwrite=False)
    dst.set(PopularityKeys(DST).seen("stale-user"), {"i9"})  # state the source does not have
    dst.set("unrelated:key", b"x")
    plan = _plan(src, dst)
    assert plan.target_existing["popularity.seen"] == len(USERS) + 1
    with pytest.raises(MigrationRefused, match=r"already holds state of the chosen processors \(.*popularity.seen: 5"):
        check_plan(plan, "src", "dst", overwrite=False)
    before = dict(dst.data)
    res = run_migration(src, dst, _mapper(), plan, PROCESSORS, "recstream_rs", "recstream_rs", overwrite=True)
    assert res.deleted == len(before) - 1
    assert PopularityKeys(DST).seen("stale-user").encode() not in dst.data and b"unrelated:key" in dst.data
    assert set(dst.data) == set(before) - {PopularityKeys(DST).seen("stale-user").encode()}


def test_only_the_chosen_processors_state_is_copied():
    src, dst = _source(), _FakeRedis()
    plan = _plan(src, dst, ["popularity"])
    assert set(plan.copy) == {"popularity.pop", "popularity.seen", "popularity.recent", "popularity.offsets"}
    assert plan.skipped["bse-encoder.seq (processor not chosen)"] == len(USERS)
    run_migration(src, dst, _mapper(), plan, ["popularity"], "recstream_rs", "recstream_rs", overwrite=False)
    assert all(b":seen:" in k or b":recent:" in k or b":pop" in k or b":offsets:popularity:" in k for k in dst.data)


def test_unknown_and_partitioned_source_keys_are_refused_with_a_count():
    src = _source()
    for k in range(25):
        src.set(f"rs:mystery:{k}", b"?")
    with pytest.raises(MigrationRefused, match=r"^25 keys under the source src belong to no known key family.*first 20: b'rs:myst"):
        check_plan(_plan(src, _FakeRedis()), "src", "dst", overwrite=False)
    src = _source()
    src.set(PopularityKeys(DST).seen("u1"), {"i1"})
    with pytest.raises(MigrationRefused, match=r"already holds 1 keys of the partitioned layout"):
        check_plan(_plan(src, _FakeRedis()), "src", "dst", overwrite=False)


def test_migrate_refuses_a_single_layout_target_a_cluster_source_and_unknown_processors():
    single = Settings(redis_url="redis://127.0.0.1:1/0", redis_prefix="rs")
    with pytest.raises(MigrationRefused, match=r"target RECSTREAM_REDIS_URL \(redis://127.0.0.1:1/0\) has the 'single'"):
        migrate(single, "redis://127.0.0.1:2/0", check_groups=False)
    cluster = Settings(redis_url="redis+cluster://127.0.0.1:1", redis_prefix="rs", topic_partitions=6)
    with pytest.raises(MigrationRefused, match=r"the source redis\+cluster://127.0.0.1:2 is a Redis Cluster"):
        migrate(cluster, "redis+cluster://127.0.0.1:2", check_groups=False)
    with pytest.raises(MigrationRefused, match=r"processors \['popularity', 'ranker'\] must be"):
        migrate(cluster, "redis://127.0.0.1:2/0", processors=["popularity", "ranker"], check_groups=False)


def test_keys_already_in_the_target_are_recognised_by_family_whatever_the_prefix():
    """The target check (and --overwrite's delete) finds the chosen processors' state by family,
    under the target's prefix and Feast project, and leaves anything else alone."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    new = KeyLayout("new", N)
    m = _mapper(target=new)
    row = _redis_key("recstream_new", EntityKey(join_keys=["item_id"], entity_values=[Value(string_val="i1")]))
    assert m.family_of_target(PopularityKeys(new).seen("u:1").encode()).name == "popularity.seen"
    assert m.family_of_target(offsets_key(new.tag(5), "popularity", "t").encode()).name == "popularity.offsets"
    assert m.family_of_target(BseKeys(new).tab("another+version", "u1").encode()).name == "bse-encoder.tab"
    assert m.family_of_target(item_features_key("new", "i1").encode()).name == "feature-writer.item-blob"
    assert m.family_of_target(row).name == "feature-writer.feast"
    for other in (b"new:something-else", PopularityKeys(KeyLayout("rs", N)).seen("u1").encode(), b"x"):
        assert m.family_of_target(other) is None, other
