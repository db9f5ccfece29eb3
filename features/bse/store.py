"""BSE store interface: behaviour sequences and per-version SDIM bucket-sum tables per user.

The algorithm lives here once (data types in features/bse/types.py, table versions and item codes
in features/bse/versions.py); a backend (in-memory, Redis) only reads a consistent snapshot
and writes a new state with compare-and-set, so both backends have the same semantics.

Exactly-once w.r.t. Kafka redelivery: each behaviour carries (topic, partition, offset), and the
store keeps, per consumer group, the next offset to apply for every partition *in the same
store, written in the same atomic step as the state change* (Redis: one Lua script). An apply
skips records whose offset is below the stored next offset, so a batch redelivered after a
crash or rebalance is a no-op; because offsets and state commit together there is no window in
which one is saved without the other (committing Kafka offsets separately would have one).
The write is a compare-and-set on each touched user's behaviour counter and on the stored
offsets, so two processors that briefly share a partition during a rebalance cannot both apply
it: the loser re-reads, skips what the winner applied, and retries.

Apply cost (the bse-encoder's hot path), per batch: one snapshot read, the tables of the touched
users decoded together (skipped for a user whose stored blob is byte-identical to the one this
store object last wrote: a bounded LRU of decoded tables, exact because decoding is a pure
function of the bytes), every add/evict scattered at once (torch index_add_, exact integer
sums), the tables re-encoded together, one compare-and-set write. Signatures and quantised
embeddings are computed once per item and version (TableVersion.codes), which also serves the
candidate path: TableVersion.item_signatures(ids) -> lookup(..., cand_sigs=...).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from features.bse import _codec
from features.bse.types import ApplyResult, Behaviour, PartitionKey, RebuildResult, _UserSnapshot, _UserWrite
from features.bse.versions import DEFAULT_ITEM_BITS, TableVersion
from features.errors import (
    ApplyConflict,
    CorruptTable,
    EmbeddingDimMismatch,
    MissingEmbeddings,
    UnknownTableVersion,
)
from models.sdim_hash import SdimConfig, SdimHasher

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LEN = 10_000
DEFAULT_TABLE_CACHE_USERS = 2048  # per maintained version; ~46 KB each (int32 table + blob)

_TORCH_THREADS = threading.Lock()


@contextlib.contextmanager
def _single_torch_thread():
    """Run small torch CPU kernels on the calling thread: intra-op worker threads only add
    synchronisation (and stall badly when the cores are shared), the scatter is tiny."""
    with _TORCH_THREADS:
        n = torch.get_num_threads()
        if n > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if n > 1:
                torch.set_num_threads(n)


def interest_from_table(table: np.ndarray, sigs: np.ndarray) -> np.ndarray:
    """SDIM interest from one user's bucket sums.

    Args:
        table: (S, B, d) bucket sums (any positive scale: each row is L2-normalised).
        sigs: (N, S) int bucket ids of the candidates.
    Returns:
        (N, d) float32: mean over signatures j of normalise(table[j, sigs[:, j]]); an empty
        (all-zero) bucket contributes zero.
    """
    t = table.astype(np.float64)  # exact for integer sums up to 2**53
    norm = np.linalg.norm(t, axis=-1, keepdims=True)  # (S, B, 1)
    unit = np.divide(t, norm, out=np.zeros_like(t), where=norm > 0).astype(np.float32)  # (S, B, d)
    n_sig = table.shape[0]
    out = np.zeros((sigs.shape[0], table.shape[-1]), dtype=np.float32)  # (N, d)
    for j in range(n_sig):  # S gathers of (N, d): no (N, S, d) temporary
        out += unit[j, sigs[:, j]]
    return out / np.float32(n_sig)


class BseStore(ABC):
    """Behaviour sequences and SDIM tables, per user.

    Args:
        versions: table versions to maintain on every apply (and to serve lookups for).
        max_seq_len: sequence cap; the oldest behaviour is evicted beyond it.
        max_attempts: compare-and-set attempts per apply before ApplyConflict.
    """

    def __init__(
        self,
        versions: Sequence[TableVersion] = (),
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        max_attempts: int = 5,
        table_cache_users: int = DEFAULT_TABLE_CACHE_USERS,
    ):
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len ({max_seq_len}) must be >= 1")
        self.max_seq_len = max_seq_len
        self.max_attempts = max_attempts
        # (version, user) -> (blob, decoded table): a user seen again skips the decode when the
        # stored blob is byte-identical to the one this process wrote (decode is a pure function
        # of the bytes, so the cache is exact; any other writer's change shows as other bytes).
        self.table_cache_users = table_cache_users
        self._table_cache: OrderedDict[tuple[str, str], tuple[bytes, np.ndarray]] = OrderedDict()
        self._table_cache_lock = threading.Lock()
        self.table_cache_hits = 0
        self.table_cache_misses = 0
        self._versions: dict[str, TableVersion] = {}
        self._maintained: list[str] = []
        for v in versions:
            self.register_version(v, maintain=v.embeddings is not None)

    # ---- versions -----------------------------------------------------------------------------

    def register_lookup_version(self, model_version: str, sdim: SdimConfig,
                                item_bits: int = DEFAULT_ITEM_BITS) -> TableVersion:
        """Register and return a lookup-only version of ranker `model_version` (its hasher, no
        embeddings): what a serving reader needs, built in one place."""
        version = TableVersion(SdimHasher(sdim), None, model_version=model_version, item_bits=item_bits)
        self.register_version(version, maintain=False)
        return version

    def register_version(self, version: TableVersion, maintain: bool = True) -> str:
        """Serve lookups for `version`; with `maintain`, also update its tables on every apply.

        Raises:
            TableVersionMismatch: the store already holds this version with other parameters.
        """
        if maintain:
            if version.embeddings is None:
                raise MissingEmbeddings(version.name)
            self._check_params(version.name, version.params())
            if version.name not in self._maintained:
                self._maintained.append(version.name)
        self._versions[version.name] = version
        return version.name

    def version(self, version: str | TableVersion) -> TableVersion:
        if isinstance(version, TableVersion):
            return self._versions.get(version.name, version)
        try:
            return self._versions[version]
        except KeyError:
            raise UnknownTableVersion(version, list(self._versions)) from None

    @property
    def maintained_versions(self) -> list[str]:
        return list(self._maintained)

    # ---- write path ---------------------------------------------------------------------------

    def apply_batch(
        self,
        behaviours: Sequence[Behaviour],
        offsets: Mapping[PartitionKey, int] | None = None,
        group: str = "bse",
    ) -> ApplyResult:
        """Append a batch of behaviours and update every maintained version's tables, atomically
        with the consumer group's offsets.

        Args:
            behaviours: in Kafka order per partition; each with its (topic, partition, offset).
            offsets: (topic, partition) -> next offset to consume after this batch (the consumer
                position); stored offsets never move backwards.
            group: consumer group whose offsets are stored with the state.
        Returns:
            ApplyResult; behaviours below the stored next offset are counted in n_skipped.
        Raises:
            ApplyConflict: the compare-and-set kept failing (another live writer).
        """
        offsets = dict(offsets or {})
        for b in behaviours:
            if b.topic is not None and b.offset is not None and b.partition is not None:
                key = (b.topic, b.partition)
                offsets[key] = max(offsets.get(key, 0), b.offset + 1)
        for attempt in range(1, self.max_attempts + 1):
            committed = self._read_offsets(group, list(offsets))
            kept = [b for b in behaviours if not self._already_applied(b, committed)]
            by_user: dict[str, list[str]] = {}
            for b in kept:
                by_user.setdefault(b.user_id, []).append(b.item_id)
            new_offsets = {k: max(v, committed.get(k, 0)) for k, v in offsets.items()}
            snaps = self._read_users({u: len(items) for u, items in by_user.items()}, self._maintained)
            self._fill_full_sequences(snaps)
            writes, n_evicted = self._plan_writes(by_user, snaps)
            if self._write(group, committed, new_offsets, writes):
                self._cache_tables(writes)
                return ApplyResult(
                    n_applied=len(kept),
                    n_skipped=len(behaviours) - len(kept),
                    n_users=len(by_user),
                    n_evicted=n_evicted,
                    n_attempts=attempt,
                    offsets=new_offsets,
                )
            log.info("bse apply: compare-and-set lost (group=%s attempt=%d), re-reading", group, attempt)
        raise ApplyConflict(group, self.max_attempts)

    @staticmethod
    def _already_applied(b: Behaviour, committed: Mapping[PartitionKey, int]) -> bool:
        if b.topic is None or b.partition is None or b.offset is None:
            return False
        return b.offset < committed.get((b.topic, b.partition), 0)

    def _fill_full_sequences(self, snaps: dict[str, _UserSnapshot]) -> None:
        """Users needing a table built from their whole sequence: a sequence but no table for some
        maintained version, or a sequence longer than max_seq_len (the cap was lowered), whose
        evictions reach past the head the snapshot read."""
        need = [
            u
            for u, s in snaps.items()
            if s.seq_len > 0
            and (any(b is None for b in s.blobs.values()) or s.seq_len - self.max_seq_len > len(s.head))
        ]
        if need:
            for u, (_, seq) in zip(need, self._read_sequences(need)):
                snaps[u].full_seq = seq
                if len(seq) > self.max_seq_len:  # rebuild every version from the trimmed sequence
                    snaps[u].blobs = {k: None for k in snaps[u].blobs}

    def _plan_writes(
        self, by_user: dict[str, list[str]], snaps: dict[str, _UserSnapshot]
    ) -> tuple[list[_UserWrite], int]:
        users = list(by_user)
        n_evicted = 0
        # per user: items to add (+1) and remove (-1) for incremental versions
        plus: list[list[str]] = []
        minus: list[list[str]] = []
        longest = self.max_seq_len
        for u in users:
            s, new = snaps[u], by_user[u]
            n_evict = max(0, s.seq_len + len(new) - self.max_seq_len)
            # evicted = the oldest n_evict of (old sequence + new items); may include new items.
            # (Users whose evictions reach past `head` have all blobs reset to None above and are
            # rebuilt from full_seq, so `evicted` is unused for them.)
            evicted = (s.head + new)[:n_evict] if n_evict else []
            n_evicted += n_evict
            plus.append(new)
            minus.append(evicted)
            longest = max(longest, s.seq_len + len(new))
        writes = [_UserWrite(u, snaps[u].n_total, by_user[u], {}) for u in users]
        for vname in self._maintained:
            v = self._versions[vname]
            # exact integer sums in int32 when no bucket sum (nor partial sum) can reach 2**31
            lim = 2 ** (v.item_bits - 1) - 1
            dtype = np.int32 if longest * lim < 2**31 - 1 else np.int64
            tables = self._load_tables(v, users, [snaps[u].blobs.get(vname) for u in users], dtype)  # (U, S, B, d)
            delta_items: list[str] = []
            n_per_user: list[int] = []
            delta_sign: list[int] = []
            for i, u in enumerate(users):
                s = snaps[u]
                if s.blobs.get(vname) is None:
                    # no table yet: build from the final sequence (new user, or a version added later)
                    final = ((s.full_seq or []) + plus[i])[-self.max_seq_len :]
                    delta_items += final
                    n_per_user.append(len(final))
                    delta_sign += [1] * len(final)
                else:
                    delta_items += plus[i]
                    delta_items += minus[i]
                    n_per_user.append(len(plus[i]) + len(minus[i]))
                    delta_sign += [1] * len(plus[i])
                    delta_sign += [-1] * len(minus[i])
            user_idx = np.repeat(np.arange(len(users)), n_per_user)
            self._scatter(v, tables, delta_items, user_idx, np.asarray(delta_sign, np.int64))
            cache = self.table_cache_users > 0
            for i, (w, blob) in enumerate(zip(writes, _codec.encode_many(tables))):
                w.blobs[vname] = blob
                if cache:
                    w.tables[vname] = tables[i].copy()
        return writes, n_evicted

    @staticmethod
    def _scatter(v: TableVersion, tables: np.ndarray, items: list[str], user_idx: np.ndarray, sign: np.ndarray) -> None:
        """tables[u, j, sig_j(e), :] += sign * q(e) for each (item, user, sign), exactly.

        Signatures and quantised embeddings come from the version's per-item memo. The sums are
        accumulated with torch index_add_ (one call per signature, no (n, S, d) temporary) in
        float32 when every partial sum stays below 2**24 (float64, exact below 2**53, otherwise),
        so the integer result is exact whatever the accumulation order.
        """
        if not items:
            return
        sigs, q = v.codes.codes(items)  # (n, S), (n, d)
        n_sig, n_buckets, dim = v.shape
        n = len(items)
        lim = 2 ** (v.item_bits - 1) - 1
        per_user = int(np.bincount(user_idx).max())
        fdt = np.float32 if per_user * lim < 2**24 else np.float64
        src = q.astype(fdt)
        if (sign != 1).any():
            src *= sign.astype(fdt)[:, None]
        keys = (user_idx[:, None] * n_sig + np.arange(n_sig)) * n_buckets + sigs  # (n, S) flat row ids
        flat = tables.reshape(-1, dim)
        dense = len(flat) <= n * n_sig  # most rows touched (rebuild, or several events per user)
        if dense:
            index, n_acc = keys, len(flat)
        else:
            used = np.zeros(len(flat), dtype=bool)  # compact the touched rows without sorting
            used[keys] = True
            uniq = np.flatnonzero(used)
            compact = np.cumsum(used, dtype=np.int64) - 1
            index, n_acc = compact[keys], len(uniq)
        acc = np.zeros((n_acc, dim), dtype=fdt)
        acc_t, src_t, index_t = torch.from_numpy(acc), torch.from_numpy(src), torch.from_numpy(np.ascontiguousarray(index.T))
        with _single_torch_thread():
            for j in range(n_sig):
                acc_t.index_add_(0, index_t[j], src_t)
        if dense:
            flat += acc.astype(flat.dtype)
        else:
            flat[uniq] += acc.astype(flat.dtype)

    def _load_tables(self, v: TableVersion, users: list[str], blobs: list[bytes | None], dtype) -> np.ndarray:
        """(U, S, B, d) tables of `dtype` (or int64 if a blob needs it): zeros without a blob,
        the cached decode when the blob is the one cached, else decoded."""
        tables = np.empty((len(users), *v.shape), dtype=dtype)
        todo: list[int] = []
        n_hits = 0
        with self._table_cache_lock:
            cache = self._table_cache
            for i, (u, blob) in enumerate(zip(users, blobs)):
                if blob is None:
                    tables[i] = 0
                    continue
                hit = cache.get((v.name, u))
                if hit is not None and hit[0] == blob:
                    tables[i] = hit[1]
                    cache.move_to_end((v.name, u))
                    n_hits += 1
                else:
                    todo.append(i)
            self.table_cache_hits += n_hits
            self.table_cache_misses += len(todo)
        if todo:
            dec = self._decode_many([blobs[i] for i in todo], [users[i] for i in todo], v, dtype)
            if dec.dtype != tables.dtype:
                tables = tables.astype(dec.dtype)
            tables[todo] = dec
        return tables

    def _cache_tables(self, writes: list[_UserWrite]) -> None:
        if self.table_cache_users <= 0:
            return
        with self._table_cache_lock:
            cache = self._table_cache
            for w in writes:
                for vname, table in w.tables.items():
                    key = (vname, w.user_id)
                    cache[key] = (w.blobs[vname], table)
                    cache.move_to_end(key)
            limit = self.table_cache_users * max(1, len(self._maintained))
            while len(cache) > limit:
                cache.popitem(last=False)

    def _decode_many(self, blobs: list[bytes], users: list[str], v: TableVersion, dtype=np.int64) -> np.ndarray:
        try:
            return _codec.decode_many(blobs, v.shape, dtype)
        except ValueError:  # find and name the bad one
            for blob, u in zip(blobs, users):
                self._decode(blob, u, v)
            raise

    @staticmethod
    def _decode(blob: bytes, user_id: str, v: TableVersion) -> np.ndarray:
        try:
            return _codec.decode(blob, v.shape)
        except ValueError as e:
            raise CorruptTable(user_id, v.name, str(e)) from e

    # ---- rebuild ------------------------------------------------------------------------------

    def rebuild(
        self,
        hasher: SdimHasher,
        embeddings: ItemEmbeddings,
        users: Iterable[str] | None = None,
        *,
        model_version: str = "base",
        item_bits: int = DEFAULT_ITEM_BITS,
        batch_users: int = 256,
        maintain: bool = True,
    ) -> RebuildResult:
        """Recompute one version's tables from the stored sequences (new ranker version deploys).

        Args:
            hasher, embeddings, model_version, item_bits: define the TableVersion.
            users: user ids to rebuild; None = every user with a sequence.
            batch_users: users per pipelined read/compute/write round.
            maintain: keep the version updated by later applies of this store object.
        Returns:
            RebuildResult with counts. A user whose sequence changed during its round is
            re-read and rebuilt once more (n_retried).
        """
        v = TableVersion(hasher, embeddings, model_version=model_version, item_bits=item_bits)
        known = self._versions.get(v.name)
        if known is not None and known.hasher is hasher and known.embeddings is embeddings:
            v = known  # keeps its per-item memo
        self.register_version(v, maintain=maintain)
        n_users = n_beh = n_retried = 0
        batch: list[str] = []
        for u in users if users is not None else self.users():
            batch.append(u)
            if len(batch) >= batch_users:
                a, b, c = self._rebuild_batch(v, batch)
                n_users, n_beh, n_retried = n_users + a, n_beh + b, n_retried + c
                batch = []
        if batch:
            a, b, c = self._rebuild_batch(v, batch)
            n_users, n_beh, n_retried = n_users + a, n_beh + b, n_retried + c
        log.info("bse rebuild %s: %d users, %d behaviours, %d retried", v.name, n_users, n_beh, n_retried)
        return RebuildResult(v.name, n_users, n_beh, n_retried)

    def _rebuild_batch(self, v: TableVersion, users: list[str]) -> tuple[int, int, int]:
        pending, n_beh, n_retried = list(users), 0, 0
        for attempt in range(self.max_attempts):
            seqs = self._read_sequences(pending)
            longest = max((len(seq) for _, seq in seqs), default=0)
            dtype = np.int32 if longest * (2 ** (v.item_bits - 1) - 1) < 2**31 - 1 else np.int64
            tables = np.zeros((len(pending), *v.shape), dtype=dtype)
            items = [i for _, seq in seqs for i in seq]
            user_idx = np.repeat(np.arange(len(pending)), [len(seq) for _, seq in seqs])
            self._scatter(v, tables, items, user_idx, np.ones(len(items), np.int64))
            blobs = _codec.encode_many(tables)
            ok = self._write_tables(v.name, [(u, n, b) for u, (n, _), b in zip(pending, seqs, blobs)])
            n_beh += sum(len(seq) for (_, seq), good in zip(seqs, ok) if good)
            failed = [u for u, good in zip(pending, ok) if not good]
            if not failed:
                return len(users), n_beh, n_retried
            n_retried += len(failed)
            pending = failed
        raise ApplyConflict(f"rebuild:{v.name}", self.max_attempts)

    # ---- read path ----------------------------------------------------------------------------

    def lookup(
        self,
        user_id: str,
        version: str | TableVersion,
        cand_embeddings: np.ndarray,
        cand_sigs: np.ndarray | None = None,
    ) -> np.ndarray:
        """SDIM long-term interest of one user for N candidates; one store read for any N.

        Args:
            user_id: the user; unknown users get zeros.
            version: table version name or TableVersion (its hasher hashes the candidates).
            cand_embeddings: (N, d) candidate item embeddings from the same ranker version.
            cand_sigs: (N, S) their signatures, if the caller already hashed them (skips hashing).
        Returns:
            (N, d) float32: mean over signatures of the L2-normalised bucket sum at the
            candidate's bucket (empty bucket -> zero vector).
        """
        v = self.version(version)
        if cand_embeddings.ndim != 2 or cand_embeddings.shape[1] != v.shape[2]:
            raise EmbeddingDimMismatch(v.name, v.shape[2], tuple(cand_embeddings.shape))
        blob = self._read_blobs([user_id], v.name)[0]
        if blob is None:
            return np.zeros(cand_embeddings.shape, dtype=np.float32)
        table = self._decode(blob, user_id, v)  # (S, B, d)
        sigs = v.hasher.signatures_np(cand_embeddings) if cand_sigs is None else cand_sigs  # (N, S)
        return interest_from_table(table, sigs)

    def tables(self, user_ids: Sequence[str], version: str | TableVersion) -> np.ndarray:
        """Raw bucket sums for several users in one read (e.g. to gather on GPU).

        Returns:
            (U, S, B, d) float32, in units of the version's quantisation step; zeros for users
            without a table.
        """
        v = self.version(version)
        out = np.zeros((len(user_ids), *v.shape), dtype=np.float32)
        blobs = self._read_blobs(list(user_ids), v.name)
        have = [i for i, b in enumerate(blobs) if b is not None]
        if have:
            out[have] = self._decode_many([blobs[i] for i in have], [user_ids[i] for i in have], v)
        return out

    def sequence(self, user_id: str, last_n: int | None = None) -> list[str]:
        """The user's behaviour item ids, oldest first; `last_n` keeps only the most recent."""
        _, seq = self._read_sequences([user_id], last_n=last_n)[0]
        return seq

    # ---- backend primitives -------------------------------------------------------------------

    @abstractmethod
    def committed_offsets(self, group: str) -> dict[PartitionKey, int]:
        """(topic, partition) -> next offset to apply, as stored atomically with the state.

        A processor seeks its assigned partitions here on (re)assignment.
        """

    @abstractmethod
    def table_bytes(self, user_id: str, version: str | TableVersion) -> int:
        """Memory the user's table of `version` takes in the store (0 if none)."""

    @abstractmethod
    def users(self) -> Iterator[str]:
        """Every user id with a stored sequence."""

    @abstractmethod
    def _check_params(self, version: str, params: dict[str, str]) -> None:
        """Record a version's parameters on first use; raise TableVersionMismatch on disagreement."""

    @abstractmethod
    def _read_offsets(self, group: str, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        """Stored next offsets for `keys` (absent ones omitted)."""

    @abstractmethod
    def _read_users(self, n_new: dict[str, int], versions: list[str]) -> dict[str, _UserSnapshot]:
        """A consistent snapshot of each user's counter, length, oldest n_new items and blobs."""

    @abstractmethod
    def _read_sequences(self, user_ids: list[str], last_n: int | None = None) -> list[tuple[int, list[str]]]:
        """(n_total, sequence oldest first) per user."""

    @abstractmethod
    def _read_blobs(self, user_ids: list[str], version: str) -> list[bytes | None]:
        """Stored table blobs of one version."""

    @abstractmethod
    def _write(
        self,
        group: str,
        expected_offsets: dict[PartitionKey, int],
        new_offsets: dict[PartitionKey, int],
        writes: list[_UserWrite],
    ) -> bool:
        """Atomically: if every user's n_total and the group's offsets still equal the expected
        values, append items (trimming to max_seq_len), bump n_total, store blobs and offsets.
        Returns False (changing nothing) otherwise."""

    @abstractmethod
    def _write_tables(self, version: str, rows: list[tuple[str, int, bytes]]) -> list[bool]:
        """Per (user, expected n_total, blob): store the blob if n_total is unchanged."""
