"""Move a deployment's Redis state from one Redis (single key layout) to a Redis Cluster
(partitioned layout): the body of `recstream redis migrate` (pipelines/redis_commands.py).

Every key is placed where the processors and readers of the partitioned layout look for it
(features/keys.py KeyLayout), and its name is built by the same key builders they use, so the
two cannot drift apart. Per key family (`<P>` the single layout's prefix, `{t(p)}` the hash tag
of partition p, `u` a user, `i` an item):

    user state           <P>:seen:u, <P>:recent:u, <P>:fw:u:u, <P>:fw:ug:u, <P>:bse:seq:u,
                         <P>:bse:n:u, <P>:bse:tab:<version>:u
                         -> the tag of the partition the producers' partitioner sends u to
    item shards          <P>:pop, <P>:fw:i:i -> the shard of partition 0 ({t(0)}): readers sum
                         every partition's shard, so the whole old value in one shard is exact
    per-tag outbox       <P>:fw:dirty:<online|offline>:<u|i>, <P>:fw:fresh -> {t(0)}: the
                         publisher reads (and clears) every tag's outbox and marks
    stored offsets       <P>:offsets:<processor>:<topic> (field "<p>"), <P>:bse:off:<group>
                         (field "<topic>:<p>") -> split field by field, partition p's offsets
                         into {t(p)}'s hash, beside the state they describe
    not per partition    <P>:if:i (item blobs), <P>:bse:ver:<version>, Feast's online rows
                         (`<entity key><project>`, the same names in Feast's redis and
                         redis_cluster modes) -> copied under the same name
    transient            <P>:bse:stage:... (a blob between staging and its RENAME, expiring in
                         10 min) -> left behind

Values travel as DUMP/RESTORE payloads (type, contents and TTL kept), read in pipelined batches
from a SCAN of the source; the offsets hashes are rewritten field by field, after the state.

Safety. The processors (and a separate feature-publisher) must be stopped: a write during the
copy could be missed, or land in the source after its key was copied. `plan` scans the whole
source first and nothing is written if a key under the prefix has no known place (listed, with a
count), if the source is itself partitioned, if the target already holds state of the chosen
processors (unless `overwrite`: then that state is deleted first), or if a stored offset names a
partition beyond the target's partition count. A migration that fails half-way leaves a partial
target: run it again with `overwrite`.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

from features.bse import BseKeys
from features.item_features import item_features_key
from features.keys import KeyLayout, PopularityKeys, offsets_key
from pipelines.stream.feature_writer import FeatureKeys, FeatureWriterHandler
from pipelines.stream.popularity import PopularityHandler
from recstream.errors import MigrationRefused

log = logging.getLogger(__name__)

PROCESSORS = ("popularity", "bse-encoder", "feature-writer")
BSE_GROUP = "bse-encoder"  # BseEncoderHandler's group: the BSE offsets hash is named after it

# Ids never hold control characters (recstream/ids.py), so a key builder called with this in place
# of an id shows where the id goes: what comes before it is the family's head.
_HOLE = "\x00"

# Unknown keys quoted in an error at most (the count is always given).
_MAX_LISTED = 20

How = Literal["user", "shard", "tag0", "same", "offsets", "skip"]


@dataclass(frozen=True)
class Family:
    """A kind of key: `name` as the summary prints it, the processor that owns it, and where it
    goes (`how`: user -> the user's partition tag; shard / tag0 -> partition 0's tag; same -> the
    same name; offsets -> split by partition; skip -> left behind)."""

    name: str
    processor: str
    how: How


@dataclass(frozen=True)
class Move:
    """Where one source key goes.

    Args:
        family: its key family.
        target: the target key (None for offsets and skipped keys).
        scope: offsets only: the topic (stream processors) or consumer group (BSE) of the hash.
        split: offsets only: hash field -> (partition, target hash).
    """

    family: Family
    target: bytes | None = None
    scope: str | None = None
    split: Callable[[bytes], tuple[int, bytes]] | None = field(default=None, compare=False)


def glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _head(built: str) -> str:
    """A builder's output with _HOLE where the id goes -> the part before the id."""
    head, hole, rest = built.partition(_HOLE)
    if not hole or rest:
        raise AssertionError(f"key builder output {built!r} does not end with the id")
    return head


class KeyMapper:
    """Single-layout key names -> partitioned ones, built from the processors' key builders.

    Args:
        source_prefix: the source's Settings.redis_prefix (single layout).
        target: the target's layout (partitioned).
        table_versions: the BSE table versions registered in the source (`<P>:bse:ver:<v>`): a
            table key `<P>:bse:tab:<v>:<u>` is split at a known version, never guessed (both a
            version and a user id may hold ':').
        feast_projects: (source, target) Feast project names; None: Feast rows are not mapped.
        feast_heads: how Feast's row keys begin (features/feast_repo.py online_key_heads).
    """

    def __init__(self, source_prefix: str, target: KeyLayout, table_versions: Iterable[str] = (),
                 feast_projects: tuple[str, str] | None = None, feast_heads: tuple[bytes, ...] = ()):
        if not target.partitioned:
            raise ValueError(f"the target layout must be partitioned, got {target}")
        self.source = KeyLayout(source_prefix)
        self.target = target
        tag0 = target.tag(0)
        sp, tp = PopularityKeys(self.source), PopularityKeys(target)
        sf, tf = FeatureKeys(self.source), FeatureKeys(target)
        sb, tb = BseKeys(self.source), BseKeys(target)
        fam, P = Family, source_prefix
        # exact names: (family, target)
        self._exact: dict[str, tuple[Family, str]] = {
            sp.popular: (fam("popularity.pop", "popularity", "shard"), tp.popular_shard(tag0)),
            sf.fresh_marks: (fam("feature-writer.fresh", "feature-writer", "tag0"), tf.fresh_marks_at(tag0)),
        }
        for t in ("online", "offline"):
            for ent in ("u", "i"):
                self._exact[sf.dirty(t, ent)] = (fam(f"feature-writer.dirty.{t}", "feature-writer", "tag0"),
                                                  tf.dirty(t, ent, tag0))
        # heads: (head, family, id -> target); an offsets family's "id" is the topic or group
        heads: list[tuple[str, Family, Callable[[str], str] | None]] = [
            (_head(sp.seen(_HOLE)), fam("popularity.seen", "popularity", "user"), tp.seen),
            (_head(sp.recent(_HOLE)), fam("popularity.recent", "popularity", "user"), tp.recent),
            (_head(sf.user(_HOLE)), fam("feature-writer.user", "feature-writer", "user"), tf.user),
            (_head(sf.genres(_HOLE)), fam("feature-writer.genres", "feature-writer", "user"), tf.genres),
            (_head(sf.item(_HOLE)), fam("feature-writer.item", "feature-writer", "shard"),
             lambda i: tf.item(i, tag0)),
            (_head(item_features_key(P, _HOLE)), fam("feature-writer.item-blob", "feature-writer", "same"),
             lambda i: item_features_key(target.prefix, i)),
            (_head(sb.seq(_HOLE)), fam("bse-encoder.seq", "bse-encoder", "user"), tb.seq),
            (_head(sb.n(_HOLE)), fam("bse-encoder.n", "bse-encoder", "user"), tb.n),
            (_head(sb.ver(_HOLE)), fam("bse-encoder.version", "bse-encoder", "same"), tb.ver),
            # staging keys: `<P>:bse:stage:<writer>:<version>:<user>`, the head ends before the writer
            (_head(sb.staging(_HOLE, "v", "u").removesuffix(":v:u")), fam("bse-encoder.staging", "bse-encoder", "skip"),
             None),
            (_head(sb.off_at(P, _HOLE)), fam("bse-encoder.offsets", "bse-encoder", "offsets"), None),
        ]
        for v in table_versions:
            heads.append((_head(sb.tab(v, _HOLE)), fam("bse-encoder.tab", "bse-encoder", "user"),
                          lambda u, v=v: tb.tab(v, u)))
        for name in (PopularityHandler.name, FeatureWriterHandler.name):
            heads.append((_head(offsets_key(P, name, _HOLE)), fam(f"{name}.offsets", name, "offsets"), None))
        self._tab_head = sb.tab(_HOLE, "u").partition(_HOLE)[0]  # `<P>:bse:tab:`, whatever the version
        heads.sort(key=lambda h: -len(h[0]))  # the longest head first: never a shorter one's prefix match
        self._heads = heads
        self._feast = feast_projects
        self._feast_heads = feast_heads
        self.feast_family = fam("feature-writer.feast", "feature-writer", "same")

    def families(self) -> list[Family]:
        return list(dict.fromkeys([*(f for f, _ in self._exact.values()), *(f for _, f, _ in self._heads),
                                   self.feast_family]))

    def map_key(self, key: bytes) -> Move | None:
        """Where a source key goes; None for a key the mapping does not know."""
        if self._feast is not None and key.endswith(self._feast[0].encode()):
            target = self._map_feast(key)
            if target is not None:
                return Move(self.feast_family, target)
        try:
            name = key.decode()
        except UnicodeDecodeError:
            return None
        if name in self._exact:
            family, target = self._exact[name]
            return Move(family, target.encode())
        for head, family, build in self._heads:
            if not name.startswith(head) or len(name) == len(head):
                continue
            rest = name[len(head):]
            if family.how == "skip":
                return Move(family)
            if family.how == "offsets":
                return Move(family, scope=rest, split=self._offsets_split(family, rest))
            return Move(family, build(rest).encode())
        return None

    def _offsets_split(self, family: Family, rest: str) -> Callable[[bytes], tuple[int, bytes]]:
        """Field -> (partition, target hash) of one offsets hash; `rest` its topic (stream
        processors) or its consumer group (the BSE store)."""
        tb = BseKeys(self.target)

        def split(f: bytes) -> tuple[int, bytes]:
            if family.processor == "bse-encoder":  # field "<topic>:<partition>"; `rest` the group
                p = self._checked(BseKeys.parse_field(f.decode())[1], family)
                return p, tb.off(rest, p).encode()
            p = self._checked(int(f), family)  # field "<partition>"; `rest` the topic
            return p, offsets_key(self.target.tag(p), family.processor, rest).encode()

        return split

    def _checked(self, partition: int, family: Family) -> int:
        if not 0 <= partition < (self.target.partitions or 0):
            raise MigrationRefused(f"{family.name}: the source stores an offset of partition {partition}, but the "
                                   f"target layout has {self.target.partitions} partitions (RECSTREAM_TOPIC_PARTITIONS "
                                   "must equal the events topic's partition count)")
        return partition

    def _map_feast(self, key: bytes) -> bytes | None:
        """A Feast row `<head><value type><value length><value><project>` -> the target project's
        name for it (the same key when the projects are equal); None if the key is not exactly that."""
        src, dst = (p.encode() for p in self._feast)
        for head in self._feast_heads:
            if not key.startswith(head) or len(key) < len(head) + 8 + len(src):
                continue
            (n_value,) = struct.unpack_from("<I", key, len(head) + 4)
            if len(key) == len(head) + 8 + n_value + len(src):
                return key[: len(key) - len(src)] + dst
        return None

    def is_partitioned(self, key: bytes) -> bool:
        """A key of the partitioned layout under the source prefix (`{<P>:p<p>}:...`)."""
        return key.startswith(f"{{{self.source.prefix}:p".encode())

    def family_of_target(self, key: bytes) -> Family | None:
        """The family of a key already in the target: its partition tag, prefix and Feast project
        read as the source's, then mapped (a table of a version the source lacks counts too)."""
        src, dst = self.source.prefix.encode(), self.target.prefix.encode()
        m = re.match(rb"\{" + re.escape(dst) + rb":p\d+\}:", key)
        if m is not None:
            key = src + b":" + key[m.end():]
        elif key.startswith(dst + b":"):
            key = src + key[len(dst):]
        elif self._feast is not None and key.endswith(self._feast[1].encode()):
            key = key[: len(key) - len(self._feast[1])] + self._feast[0].encode()
        move = self.map_key(key)
        if move is None and key.startswith(self._tab_head.encode()):
            return Family("bse-encoder.tab", "bse-encoder", "user")
        return None if move is None else move.family


@dataclass
class Plan:
    """What a migration copies (counts per family), leaves, and refuses."""

    copy: Counter = field(default_factory=Counter)  # family name -> keys
    skipped: Counter = field(default_factory=Counter)  # "<family> (<why>)" -> keys left behind
    # target offsets hash -> {field: next offset}; and (processor, topic/group) -> {partition: next offset}
    offsets_writes: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    offsets: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    unknown: list[bytes] = field(default_factory=list)
    n_unknown: int = 0
    n_partitioned: int = 0  # source keys already in the partitioned layout
    n_scanned: int = 0  # source keys the copy pass will scan again (its progress total)
    target_existing: Counter = field(default_factory=Counter)  # family name -> keys already in the target

    @property
    def n_keys(self) -> int:
        return sum(self.copy.values())

    def lines(self) -> list[str]:
        """The plan as a reader wants it: per family, then the offsets per partition."""
        out = [f"  {name:<34} {n:>10,} keys" for name, n in sorted(self.copy.items())]
        out += [f"  {name:<34} {n:>10,} keys left behind" for name, n in sorted(self.skipped.items())]
        for (proc, scope), offs in sorted(self.offsets.items()):
            where = f"group {scope}" if proc == "bse-encoder" else f"topic {scope}"
            out.append(f"  next offsets of {proc} ({where}): "
                       + ", ".join(f"p{p}={o}" for p, o in sorted(offs.items())))
        return out


def _quote(key: bytes) -> str:
    return repr(key[:64]) + ("..." if len(key) > 64 else "")


def scan_source(r, prefix: str, feast_project: str | None, count: int = 1000) -> Iterator[bytes]:
    """Every key a single-layout deployment may own: `<prefix>:*`, `{<prefix>:p*` (a partitioned
    source, refused) and Feast's rows of its project."""
    patterns = [f"{glob_escape(prefix)}:*", f"{{{glob_escape(prefix)}:p*"]
    if feast_project is not None:
        patterns.append(f"*{glob_escape(feast_project)}")
    seen_own = f"{prefix}:".encode()
    for k, pattern in enumerate(patterns):
        for key in r.scan_iter(match=pattern, count=count):
            if k == 2 and (key.startswith(seen_own) or key.startswith(b"{")):
                continue  # listed by the first two patterns already
            yield key


def table_versions(r, prefix: str) -> list[str]:
    """The BSE table versions registered under `prefix` (single layout)."""
    head = _head(BseKeys(KeyLayout(prefix)).ver(_HOLE))
    return sorted(k.decode()[len(head):] for k in r.scan_iter(match=f"{glob_escape(head)}*", count=1000))


def make_plan(src, dst, mapper: KeyMapper, processors: Iterable[str], feast_project: str | None,
              target_feast_project: str | None) -> Plan:
    """Scan the source (and the target for state already there) and decide every key's fate.
    Reads only. Offsets hashes are read here: they are few, and the summary prints them."""
    chosen = set(processors)
    plan = Plan()
    offsets_src: list[tuple[bytes, Move]] = []
    for key in scan_source(src, mapper.source.prefix, feast_project):
        plan.n_scanned += 1
        if mapper.is_partitioned(key):
            plan.n_partitioned += 1
            continue
        move = mapper.map_key(key)
        if move is None:
            plan.n_unknown += 1
            if len(plan.unknown) < _MAX_LISTED:
                plan.unknown.append(key)
        elif move.family.how == "skip":
            plan.skipped[f"{move.family.name} (transient)"] += 1
        elif move.family.processor not in chosen:
            plan.skipped[f"{move.family.name} (processor not chosen)"] += 1
        elif move.family.how == "offsets":
            offsets_src.append((key, move))
        else:
            plan.copy[move.family.name] += 1
    for key, move in offsets_src:
        for f, v in src.hgetall(key).items():
            partition, target = move.split(f)
            plan.offsets_writes.setdefault(target, {})[f] = v
            plan.offsets.setdefault((move.family.processor, move.scope), {})[partition] = int(v)
        plan.copy[move.family.name] += 1
    for key in scan_target(dst, mapper.target, target_feast_project):
        family = mapper.family_of_target(key)
        if family is not None and family.processor in chosen:
            plan.target_existing[family.name] += 1
    return plan


def scan_target(r, target: KeyLayout, feast_project: str | None, count: int = 1000) -> Iterator[bytes]:
    """Keys of the target that a partitioned deployment under `target.prefix` may own."""
    patterns = [f"{{{glob_escape(target.prefix)}:p*}}:*", f"{glob_escape(target.prefix)}:*"]
    if feast_project is not None:
        patterns.append(f"*{glob_escape(feast_project)}")
    for k, pattern in enumerate(patterns):
        for key in r.scan_iter(match=pattern, count=count):
            if k == 2 and (key.startswith(f"{target.prefix}:".encode()) or key.startswith(b"{")):
                continue
            yield key


def check_plan(plan: Plan, source_desc: str, target_desc: str, overwrite: bool) -> None:
    """Raise MigrationRefused naming the values unless the plan can run."""
    if plan.n_partitioned:
        raise MigrationRefused(f"the source {source_desc} already holds {plan.n_partitioned} keys of the partitioned "
                               "layout ({<prefix>:p<p>}:...): it is not a single-layout deployment; nothing copied")
    if plan.n_unknown:
        raise MigrationRefused(f"{plan.n_unknown} keys under the source {source_desc} belong to no known key family, "
                               f"so their place on the cluster is unknown; first {len(plan.unknown)}: "
                               + ", ".join(_quote(k) for k in plan.unknown) + "; nothing copied")
    if plan.target_existing and not overwrite:
        found = ", ".join(f"{name}: {n}" for name, n in sorted(plan.target_existing.items()))
        raise MigrationRefused(f"the target {target_desc} already holds state of the chosen processors ({found} "
                               "keys); pass --overwrite to delete it and copy, or choose another prefix; nothing copied")


def active_consumers(bootstrap: str, groups: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
    """group -> members now in it (0 for a group unknown to Kafka), from the group coordinator.

    Raises:
        MigrationRefused: Kafka does not answer (the command's --no-check-groups skips the check).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    groups = list(groups)
    # librdkafka's own connection-failure lines say nothing the error below does not
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    out = {}
    for g, fut in admin.describe_consumer_groups(groups, request_timeout=timeout_s).items():
        try:
            out[g] = len(fut.result(timeout=timeout_s + 5).members)
        except KafkaException as e:
            if e.args and e.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:
                out[g] = 0
                continue
            raise MigrationRefused(f"cannot ask Kafka {bootstrap} whether consumer group {g!r} is empty: {e}; "
                                   "stop the processors and pass --no-check-groups to skip the check") from e
        except TimeoutError as e:
            raise MigrationRefused(f"Kafka {bootstrap} did not describe consumer group {g!r} within {timeout_s:.0f} "
                                   "s; stop the processors and pass --no-check-groups to skip the check") from e
    return out


def topic_partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int | None:
    """The topic's partition count (None: no such topic)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        meta = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as e:
        raise MigrationRefused(f"cannot read topic {topic!r} from Kafka {bootstrap}: {e}; pass --no-check-groups "
                               "to skip the Kafka checks") from e
    return None if meta is None or meta.error is not None else len(meta.partitions)


@dataclass
class Result:
    """What run_migration wrote."""

    copied: Counter = field(default_factory=Counter)  # family name -> keys written to the target
    deleted: int = 0  # target keys deleted first (overwrite)
    vanished: int = 0  # keys gone (expired) between the scan and their DUMP


def _batches(keys: Iterable, size: int) -> Iterator[list]:
    batch = []
    for k in keys:
        batch.append(k)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_migration(src, dst, mapper: KeyMapper, plan: Plan, processors: Iterable[str], feast_project: str | None,
                  target_feast_project: str | None, overwrite: bool, batch_keys: int = 500,
                  progress: Callable[[int], None] | None = None) -> Result:
    """Copy what `plan` (checked by check_plan) says: first, with `overwrite`, delete the target's
    state of the chosen processors; then the state, DUMP/RESTORE in pipelined batches; the
    offsets last. `progress(n)` after each batch of n source keys."""
    chosen = set(processors)
    res = Result()
    if overwrite and plan.target_existing:
        doomed = (k for k in scan_target(dst, mapper.target, target_feast_project)
                  if (f := mapper.family_of_target(k)) is not None and f.processor in chosen)
        for batch in _batches(list(doomed), batch_keys):  # listed first: no deletes while a SCAN runs
            with dst.pipeline(transaction=False) as pipe:
                for k in batch:
                    pipe.delete(k)
                res.deleted += sum(pipe.execute())
    for batch in _batches(scan_source(src, mapper.source.prefix, feast_project), batch_keys):
        moves = [(k, m) for k in batch if (m := mapper.map_key(k)) is not None
                 and m.family.processor in chosen and m.family.how not in ("skip", "offsets")]
        if moves:
            with src.pipeline(transaction=False) as pipe:
                for k, _ in moves:
                    pipe.dump(k)
                    pipe.pttl(k)
                raw = pipe.execute()
            with dst.pipeline(transaction=False) as pipe:
                written = []
                for (k, m), payload, ttl_ms in zip(moves, raw[0::2], raw[1::2]):
                    if payload is None or ttl_ms == -2:
                        res.vanished += 1
                        continue
                    # RESTORE refuses an existing key (BUSYKEY): the target was checked empty or cleared
                    pipe.restore(m.target, max(int(ttl_ms), 0), payload)
                    written.append(m.family.name)
                try:
                    pipe.execute()
                except Exception as e:
                    raise MigrationRefused(f"RESTORE into the target failed after {sum(res.copied.values())} keys "
                                           f"({e}); the target is partial: fix the cause and run again with "
                                           "--overwrite") from e
            res.copied.update(written)
        if progress is not None:
            progress(len(batch))
    with dst.pipeline(transaction=False) as pipe:
        for target, fields in plan.offsets_writes.items():
            pipe.hset(target, mapping=fields)
        pipe.execute()
    res.copied.update({name: n for name, n in plan.copy.items() if name.endswith(".offsets")})
    return res


@dataclass
class Migration:
    """What `migrate` planned and, unless a dry run, did."""

    plan: Plan
    result: Result | None
    source: str
    target: str


def migrate(settings, source_url: str, source_prefix: str | None = None, processors: Iterable[str] = PROCESSORS,
            dry_run: bool = False, overwrite: bool = False, check_groups: bool = True, batch_keys: int = 500,
            progress: Callable[[Plan], Callable[[int], None]] | None = None) -> Migration:
    """Copy a single-layout deployment's state from `source_url` into the target of `settings`
    (its redis_url, prefix and partitioned layout); see the module docstring.

    Args:
        settings: the target deployment's Settings (redis_key_layout must be partitioned).
        source_url: the old Redis (redis://, rediss:// or unix://).
        source_prefix: the old deployment's redis_prefix (default: the target's).
        processors: whose state to copy (PROCESSORS, default all).
        dry_run: plan and check only; write nothing.
        overwrite: delete the target's state of these processors first instead of refusing.
        check_groups: ask Kafka: refuse while a consumer group `recstream.<processor>` has members,
            or when the events topic's partition count is not settings.topic_partitions.
        progress: called with the plan before copying (e.g. to size a bar); returns a callable
            that run_migration calls with the source keys done after each batch.
    Returns:
        the plan and, unless dry_run, the result.
    Raises:
        MigrationRefused: naming the values; nothing is written (see the module docstring).
    """
    from features.feast_repo import online_key_heads, project_for_prefix
    from recstream.redis_io import is_cluster_url, redis_client

    processors = list(processors)
    unknown = [p for p in processors if p not in PROCESSORS]
    if unknown or not processors:
        raise MigrationRefused(f"processors {processors} must be a non-empty subset of {list(PROCESSORS)}")
    source_prefix = source_prefix or settings.redis_prefix
    target_desc = f"{settings.redis_url} (prefix {settings.redis_prefix!r}, {settings.topic_partitions} partitions)"
    source_desc = f"{source_url} (prefix {source_prefix!r})"
    if settings.redis_key_layout != "partitioned" or settings.redis_partitions is None:
        raise MigrationRefused(f"the target RECSTREAM_REDIS_URL ({settings.redis_url}) has the "
                               f"{settings.redis_key_layout!r} key layout; a migration writes the partitioned one: set "
                               "RECSTREAM_REDIS_URL=redis+cluster://... (or RECSTREAM_REDIS_KEY_LAYOUT=partitioned)")
    if is_cluster_url(source_url):
        raise MigrationRefused(f"the source {source_url} is a Redis Cluster; the migration reads a single Redis "
                               "(single key layout)")
    if source_url == settings.redis_url and source_prefix == settings.redis_prefix:
        raise MigrationRefused(f"source and target are the same Redis and prefix ({source_desc}); item blobs, BSE "
                               "versions and Feast rows keep their names, so they would collide")
    if check_groups:
        busy = {g: n for g, n in active_consumers(settings.kafka_bootstrap,
                                                  [f"recstream.{p}" for p in processors]).items() if n}
        if busy:
            raise MigrationRefused(f"consumer groups still have members: {busy} (Kafka {settings.kafka_bootstrap}); "
                                   "stop the processors (and a separate feature-publisher) before migrating")
        # users' keys are placed by the partition count: a wrong one puts them where no reader looks
        n = topic_partitions(settings.kafka_bootstrap, settings.events_topic)
        if n is not None and n != settings.topic_partitions:
            raise MigrationRefused(f"topic {settings.events_topic} has {n} partitions but RECSTREAM_TOPIC_PARTITIONS="
                                   f"{settings.topic_partitions}; set it to the topic's partition count (the "
                                   "partitioned layout places a user's keys by it)")
    target = KeyLayout.from_settings(settings)
    src = redis_client(source_url, decode_responses=False)
    dst = redis_client(settings.redis_url, decode_responses=False)
    feast_src, feast_dst = project_for_prefix(source_prefix), project_for_prefix(settings.redis_prefix)
    mapper = KeyMapper(source_prefix, target, table_versions(src, source_prefix), (feast_src, feast_dst),
                       online_key_heads())
    plan = make_plan(src, dst, mapper, processors, feast_src, feast_dst)
    out = Migration(plan, None, source_desc, target_desc)
    if dry_run:
        return out
    check_plan(plan, source_desc, target_desc, overwrite)
    step = progress(plan) if progress is not None else None
    out.result = run_migration(src, dst, mapper, plan, processors, feast_src, feast_dst, overwrite,
                               batch_keys=batch_keys, progress=step)
    log.info("migrated %d keys from %s to %s", sum(out.result.copied.values()), source_desc, target_desc)
    return out
