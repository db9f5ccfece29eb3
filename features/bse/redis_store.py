"""Redis BSE store.

Keys (`{t}` is the KeyLayout tag, features/keys.py: the prefix Settings.redis_prefix with the
single layout; with the partitioned one (Redis Cluster) the hash tag of the user's Kafka partition
for user keys, of the offsets' partition for offsets, so one partition's state and offsets share
a slot):
    {t}:bse:seq:{user}            list of item ids, oldest first, capped at max_seq_len
    {t}:bse:n:{user}              behaviours ever appended (compare-and-set token)
    {t}:bse:tab:{version}:{user}  packed table blob (features.bse._codec)
    {t}:bse:off:{group}           hash "topic:partition" -> next offset to apply
    {p}:bse:ver:{version}         hash of the version's parameters (hasher, step, ...)
    {t}:bse:stage:{writer}:{version}:{user}  a new blob between staging and the script's RENAME

An apply costs three round trips whatever the batch size: the stored offsets, one MULTI/EXEC
snapshot (a read-only Lua script for counters, lengths and eviction heads, and MGET of the blobs),
then one pipeline that stages the new blobs (see _WRITE_SCRIPT) and runs a Lua script that checks
the counters and offsets still match the snapshot and only then writes sequences, tables and
offsets. Redis runs a script atomically and, with appendonly, logs its effects as one
transaction, so offsets never survive a restart without the state they describe. The new
tables are computed in Python (numpy) between the two trips, which keeps the script short and
Redis' single thread free of arithmetic. The script touches many users' keys, all declared in
KEYS: with the partitioned layout an apply is split by partition (users and offsets of one
partition share its hash tag), so each script runs in one cluster slot. A cluster client cannot
pipeline a script, so there the snapshot is the read script followed by the MGET (safe: any write
in between changes a counter the compare-and-set checks) and the staging SETs go one trip before
the write script.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Iterator, Sequence

import redis

from features.bse.store import DEFAULT_MAX_SEQ_LEN, DEFAULT_TABLE_CACHE_USERS, BseStore
from features.bse.types import ApplyResult, Behaviour, _UserSnapshot, _UserWrite, PartitionKey
from features.keys import KeyLayout
from recstream.redis_io import is_cluster, redis_client
from features.bse.versions import TableVersion
from features.errors import TableVersionMismatch

_LUA_CHUNK = 1000  # RPUSH arguments per unpack(): Lua's C stack holds ~8000

# Blobs never pass through Lua (a script's arguments and GET results are copied into Lua
# strings: ~40 ms per 7 MB, more than the whole rest of the script). The writer first stores
# each new blob natively under a private staging key (SET PX, in the same pipeline, so still one
# round trip); the script checks the counters and offsets and then RENAMEs staging keys onto the
# table keys (O(1), no copy), or deletes them if the compare-and-set fails. A writer that dies
# between the two leaves staging keys that expire.
_WRITE_SCRIPT = """
local off_key = KEYS[1]
local max_len = tonumber(ARGV[1])
local n_off = tonumber(ARGV[2])
local first = 3 + 3 * n_off
local n_users = tonumber(ARGV[first]); local n_ver = tonumber(ARGV[first + 1])
local per_key = 2 + 2 * n_ver  -- n, seq, then (table, staging) per version
local function drop_staging()
  for u = 0, n_users - 1 do
    for v = 1, n_ver do redis.call('DEL', KEYS[2 + u * per_key + 2 * v + 1]) end
  end
  return 0
end
local a = 3
for i = 1, n_off do
  local cur = redis.call('HGET', off_key, ARGV[a])
  local exp = ARGV[a + 1]
  if (cur == false and exp ~= '') or (cur ~= false and cur ~= exp) then return drop_staging() end
  a = a + 3
end
a = first + 2
local k = 2
for u = 1, n_users do
  local cur = redis.call('GET', KEYS[k]) or '0'
  if cur ~= ARGV[a] then return drop_staging() end
  a = a + 3 + tonumber(ARGV[a + 1])  -- expected, n_items, items, new_n
  k = k + per_key
end
a = first + 2; k = 2
for u = 1, n_users do
  local n_items = tonumber(ARGV[a + 1])
  redis.call('SET', KEYS[k], ARGV[a + n_items + 2])
  a = a + 2
  local i = 0
  local len = 0
  while i < n_items do
    local hi = math.min(i + CHUNK, n_items)
    len = redis.call('RPUSH', KEYS[k + 1], unpack(ARGV, a + i, a + hi - 1))
    i = hi
  end
  if len > max_len then redis.call('LTRIM', KEYS[k + 1], -max_len, -1) end
  a = a + n_items + 1
  for v = 1, n_ver do
    local tab, staged = KEYS[k + 2 * v], KEYS[k + 2 * v + 1]
    redis.call('RENAME', staged, tab)
    redis.call('PERSIST', tab)
  end
  k = k + per_key
end
a = 3
for i = 1, n_off do
  redis.call('HSET', off_key, ARGV[a], ARGV[a + 2]); a = a + 3
end
return 1
""".replace("CHUNK", str(_LUA_CHUNK))

# Snapshot read, run inside MULTI/EXEC together with one MGET of the blobs per version: per user
# [n_total, length, oldest n_new items]. One reply per user parses much faster than 3-4, and the
# blobs come from native MGET (no Lua copies).
_READ_SCRIPT = """
local out = {}
for i = 1, #ARGV do
  local n, s = KEYS[2 * i - 1], KEYS[2 * i]
  out[i] = {redis.call('GET', n) or '0', redis.call('LLEN', s), redis.call('LRANGE', s, 0, tonumber(ARGV[i]) - 1)}
end
return out
"""

_STAGING_TTL_MS = 600_000

_WRITE_TABLES_SCRIPT = """
local ok = {}
for u = 1, #KEYS / 2 do
  local cur = redis.call('GET', KEYS[2 * u - 1]) or '0'
  if cur == ARGV[2 * u - 1] then
    redis.call('SET', KEYS[2 * u], ARGV[2 * u]); ok[u] = 1
  else
    ok[u] = 0
  end
end
return ok
"""


class BseKeys:
    """The store's key names (see the module docstring), one builder each."""

    def __init__(self, layout: KeyLayout):
        self.layout = layout

    def seq(self, u: str) -> str:
        return f"{self.layout.user_tag(u)}:bse:seq:{u}"

    def n(self, u: str) -> str:
        return f"{self.layout.user_tag(u)}:bse:n:{u}"

    def tab(self, version: str, u: str) -> str:
        return f"{self.layout.user_tag(u)}:bse:tab:{version}:{u}"

    def off_at(self, tag: str, group: str) -> str:
        """The offsets hash under a KeyLayout tag; fields `<topic>:<partition>` (`field`)."""
        return f"{tag}:bse:off:{group}"

    def off(self, group: str, partition: int | None = None) -> str:
        """The offsets hash holding `partition` (the only one with the single layout)."""
        return self.off_at(self.layout.tag(partition), group)

    @staticmethod
    def field(key: PartitionKey) -> str:
        return f"{key[0]}:{key[1]}"

    @staticmethod
    def parse_field(field: str) -> PartitionKey:
        """`field`'s inverse: (topic, partition)."""
        topic, _, part = field.rpartition(":")
        return topic, int(part)

    def ver(self, version: str) -> str:
        """A version's parameters: not per partition (under the plain prefix in either layout)."""
        return f"{self.layout.prefix}:bse:ver:{version}"

    def staging(self, writer: str, version: str, u: str) -> str:
        return f"{self.layout.user_tag(u)}:bse:stage:{writer}:{version}:{u}"


class RedisBseStore(BseStore):
    """BSE store in one Redis or a Redis Cluster.

    Args:
        client: a redis-py client (or RedisCluster) with decode_responses=False (blobs are binary).
        prefix: key prefix (Settings.redis_prefix).
        versions, max_seq_len, max_attempts: see BseStore.
        layout: the key layout (KeyLayout.from_settings); None: the single layout under `prefix`.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "rs",
        versions: Sequence[TableVersion] = (),
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        max_attempts: int = 5,
        table_cache_users: int = DEFAULT_TABLE_CACHE_USERS,
        layout: KeyLayout | None = None,
    ):
        self.r = client
        if layout is not None and layout.prefix != prefix:
            raise ValueError(f"prefix ({prefix!r}) and layout.prefix ({layout.prefix!r}) must be equal")
        self.layout = layout or KeyLayout(prefix)
        self.prefix = self.layout.prefix
        self.keys = BseKeys(self.layout)
        self._cluster = is_cluster(client)
        self._write_script = client.register_script(_WRITE_SCRIPT)
        self._read_script = client.register_script(_READ_SCRIPT)
        self._token = uuid.uuid4().hex[:12]  # this writer's staging keys
        self._write_tables_script = client.register_script(_WRITE_TABLES_SCRIPT)
        super().__init__(versions, max_seq_len=max_seq_len, max_attempts=max_attempts,
                         table_cache_users=table_cache_users)

    @classmethod
    def from_url(cls, url: str, prefix: str = "rs", **kwargs) -> "RedisBseStore":
        return cls(redis_client(url, decode_responses=False), prefix=prefix, **kwargs)

    # ---- keys (BseKeys builds them; the migration command maps them with the same builders) ----

    def _k_seq(self, u: str) -> str:
        return self.keys.seq(u)

    def _k_n(self, u: str) -> str:
        return self.keys.n(u)

    def _k_tab(self, version: str, u: str) -> str:
        return self.keys.tab(version, u)

    def _k_off(self, group: str, partition: int | None = None) -> str:
        """The offsets hash holding `partition` (the only one with the single layout)."""
        return self.keys.off(group, partition)

    def _by_tag(self, user_ids: Sequence[str]) -> dict[str, list[int]]:
        """Positions of the users per tag (one group with the single layout)."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, u in enumerate(user_ids):
            groups[self.layout.user_tag(u)].append(i)
        return groups

    _field = staticmethod(BseKeys.field)

    # ---- public -------------------------------------------------------------------------------

    def committed_offsets(self, group: str) -> dict[PartitionKey, int]:
        keys = [self.keys.off_at(t, group) for t in self.layout.tags()]
        if len(keys) == 1:
            raws = [self.r.hgetall(keys[0])]
        else:
            with self.r.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hgetall(k)
                raws = pipe.execute()
        out = {}
        for raw in raws:
            for f, v in raw.items():
                out[BseKeys.parse_field(f.decode())] = int(v)
        return out

    def apply_batch(self, behaviours: Sequence[Behaviour], offsets=None, group: str = "bse") -> ApplyResult:
        """BseStore.apply_batch; with the partitioned layout, one atomic apply per partition (its
        users' state and its offsets share the partition's hash tag).

        Raises:
            ValueError: a behaviour from partition p of a user the partitioner sends elsewhere
                (the processors refuse such records to the DLQ before they get here).
        """
        if not self.layout.partitioned:
            return super().apply_batch(behaviours, offsets, group)
        beh: dict[str, list[Behaviour]] = defaultdict(list)
        offs: dict[str, dict[PartitionKey, int]] = defaultdict(dict)
        for key, o in (offsets or {}).items():
            offs[self.layout.tag(key[1])][key] = o
        for b in behaviours:
            tag = self.layout.user_tag(b.user_id)
            if b.partition is not None and self.layout.tag(b.partition) != tag:
                raise ValueError(f"behaviour of user {b.user_id[:64]!r} from partition {b.partition}, but the "
                                 f"partitioner sends that user to partition {self.layout.user_partition(b.user_id)}")
            beh[tag].append(b)
        results = [super(RedisBseStore, self).apply_batch(beh.get(t, []), offs.get(t, {}), group)
                   for t in dict.fromkeys([*offs, *beh])]
        return ApplyResult(n_applied=sum(r.n_applied for r in results), n_skipped=sum(r.n_skipped for r in results),
                           n_users=sum(r.n_users for r in results), n_evicted=sum(r.n_evicted for r in results),
                           n_attempts=max((r.n_attempts for r in results), default=1),
                           offsets={k: o for r in results for k, o in r.offsets.items()})

    def table_bytes(self, user_id: str, version: str | TableVersion) -> int:
        name = version.name if isinstance(version, TableVersion) else version
        # SAMPLES 0: exact for a string; includes key, object header and allocator rounding
        return int(self.r.memory_usage(self._k_tab(name, user_id), samples=0) or 0)

    def users(self) -> Iterator[str]:
        for pattern in self.layout.scan_patterns("bse:n:*"):
            for k in self.r.scan_iter(match=pattern, count=1000):
                yield k.decode().partition(":bse:n:")[2]

    # ---- backend primitives -------------------------------------------------------------------

    def _k_ver(self, version: str) -> str:
        return self.keys.ver(version)

    def holds_version(self, version: str | TableVersion) -> bool:
        """Whether a writer registered (and so maintains or rebuilt) tables of this version here."""
        name = version.name if isinstance(version, TableVersion) else version
        return bool(self.r.exists(self._k_ver(name)))

    def _check_params(self, version: str, params: dict[str, str]) -> None:
        key = self._k_ver(version)
        pipe = self.r.pipeline(transaction=True)
        for f, v in params.items():
            pipe.hsetnx(key, f, v)
        pipe.execute()
        # read after: each field keeps the first writer's value, so a later reader sees the winner
        # (a cluster transaction would return HGETALL's reply unparsed)
        stored = {k.decode(): v.decode() for k, v in self.r.hgetall(key).items()}
        for f, v in params.items():
            if stored.get(f) != v:
                raise TableVersionMismatch(version, f, str(stored.get(f)), v)

    def _read_offsets(self, group: str, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        if not keys:
            return {}
        by_key: dict[str, list[PartitionKey]] = defaultdict(list)
        for k in keys:
            by_key[self._k_off(group, k[1])].append(k)
        out = {}
        for off_key, ks in by_key.items():
            vals = self.r.hmget(off_key, [self._field(k) for k in ks])
            out.update({k: int(v) for k, v in zip(ks, vals) if v is not None})
        return out

    def _scripts_loaded(self, run):
        """run(); if Redis lost the scripts (restart, SCRIPT FLUSH), load them and run again."""
        try:
            return run()
        except redis.exceptions.NoScriptError:
            self.r.script_load(_READ_SCRIPT)
            self.r.script_load(_WRITE_SCRIPT)
            return run()

    def _read_users(self, n_new: dict[str, int], versions: list[str]) -> dict[str, _UserSnapshot]:
        if not n_new:
            return {}
        users = list(n_new)
        keys: list[str] = []
        for u in users:
            keys += [self._k_n(u), self._k_seq(u)]

        def run():
            if self._cluster:  # see the module docstring: script first, then the blobs
                return [self.r.evalsha(self._read_script.sha, len(keys), *keys, *n_new.values()),
                        *(self.r.mget([self._k_tab(v, u) for u in users]) for v in versions)]
            pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: one consistent snapshot
            pipe.evalsha(self._read_script.sha, len(keys), *keys, *n_new.values())
            for v in versions:
                pipe.mget([self._k_tab(v, u) for u in users])
            return pipe.execute()

        res = self._scripts_loaded(run)
        blobs = res[1:]
        out = {}
        for i, (u, rec) in enumerate(zip(users, res[0])):
            out[u] = _UserSnapshot(
                n_total=int(rec[0]),
                seq_len=int(rec[1]),
                head=[h.decode() for h in rec[2]],
                blobs={v: blobs[j][i] for j, v in enumerate(versions)},
            )
        return out

    def _read_sequences(self, user_ids: list[str], last_n: int | None = None) -> list[tuple[int, list[str]]]:
        out: list[tuple[int, list[str]]] = [(0, [])] * len(user_ids)
        for idx in self._by_tag(user_ids).values():  # one transaction per slot
            pipe = self.r.pipeline(transaction=True)
            for i in idx:
                pipe.get(self._k_n(user_ids[i]))
                pipe.lrange(self._k_seq(user_ids[i]), -last_n if last_n else 0, -1)
            res = pipe.execute()
            for j, i in enumerate(idx):
                out[i] = (int(res[2 * j] or 0), [x.decode() for x in res[2 * j + 1]])
        return out

    def _read_blobs(self, user_ids: list[str], version: str) -> list[bytes | None]:
        if len(user_ids) == 1:
            return [self.r.get(self._k_tab(version, user_ids[0]))]
        out: list[bytes | None] = [None] * len(user_ids)
        for idx in self._by_tag(user_ids).values():
            for i, blob in zip(idx, self.r.mget([self._k_tab(version, user_ids[i]) for i in idx])):
                out[i] = blob
        return out

    def _k_staging(self, version: str, u: str) -> str:
        return self.keys.staging(self._token, version, u)

    def _write(
        self,
        group: str,
        expected_offsets: dict[PartitionKey, int],
        new_offsets: dict[PartitionKey, int],
        writes: list[_UserWrite],
    ) -> bool:
        versions = sorted({v for w in writes for v in w.blobs})
        if new_offsets:  # all of one tag: apply_batch splits a partitioned batch by partition
            off_key = self._k_off(group, next(iter(new_offsets))[1])
        elif writes:
            off_key = self.keys.off_at(self.layout.user_tag(writes[0].user_id), group)
        else:
            return True
        keys: list[str] = [off_key]
        args: list[str | bytes | int] = [self.max_seq_len, len(new_offsets)]
        for k, new in new_offsets.items():
            exp = expected_offsets.get(k)
            args += [self._field(k), "" if exp is None else str(exp), str(new)]
        args += [len(writes), len(versions)]
        staged: list[tuple[str, bytes]] = []
        for w in writes:
            keys += [self._k_n(w.user_id), self._k_seq(w.user_id)]
            for v in versions:
                stage = self._k_staging(v, w.user_id)
                keys += [self._k_tab(v, w.user_id), stage]
                staged.append((stage, w.blobs[v]))
            args += [str(w.expected_n_total), len(w.new_items), *w.new_items]
            args.append(str(w.expected_n_total + len(w.new_items)))

        def run():
            pipe = self.r.pipeline(transaction=False)  # one round trip: staging SETs, then the script
            for stage, blob in staged:
                pipe.set(stage, blob, px=_STAGING_TTL_MS)
            if self._cluster:  # a cluster pipeline cannot carry a script: a second trip
                if staged:
                    pipe.execute()
                return self.r.evalsha(self._write_script.sha, len(keys), *keys, *args)
            pipe.evalsha(self._write_script.sha, len(keys), *keys, *args)
            return pipe.execute()[-1]

        return int(self._scripts_loaded(run)) == 1

    def _write_tables(self, version: str, rows: list[tuple[str, int, bytes]]) -> list[bool]:
        ok = [False] * len(rows)
        for idx in self._by_tag([u for u, _, _ in rows]).values():  # one script per slot
            keys: list[str] = []
            args: list[str | bytes] = []
            for i in idx:
                u, n_total, blob = rows[i]
                keys += [self._k_n(u), self._k_tab(version, u)]
                args += [str(n_total), blob]
            for i, x in zip(idx, self._write_tables_script(keys=keys, args=args)):
                ok[i] = bool(x)
        return ok
