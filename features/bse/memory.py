"""In-memory BSE store: the Redis store's semantics in one process (unit tests, notebooks)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterator, Sequence

from features.bse.store import DEFAULT_MAX_SEQ_LEN, DEFAULT_TABLE_CACHE_USERS, BseStore
from features.bse.types import _UserSnapshot, _UserWrite, PartitionKey
from features.bse.versions import TableVersion
from features.errors import TableVersionMismatch


class InMemoryBseStore(BseStore):
    """Same interface and blobs as RedisBseStore; state lives in dicts behind one lock.

    `table_bytes` reports the blob length (no allocator overhead, unlike Redis MEMORY USAGE).
    """

    def __init__(
        self,
        versions: Sequence[TableVersion] = (),
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        max_attempts: int = 5,
        table_cache_users: int = DEFAULT_TABLE_CACHE_USERS,
    ):
        self._lock = threading.RLock()
        self._seq: dict[str, deque[str]] = {}
        self._n_total: dict[str, int] = {}
        self._blobs: dict[tuple[str, str], bytes] = {}  # (version, user) -> blob
        self._offsets: dict[str, dict[PartitionKey, int]] = {}
        self._params: dict[str, dict[str, str]] = {}
        super().__init__(versions, max_seq_len=max_seq_len, max_attempts=max_attempts,
                         table_cache_users=table_cache_users)

    def committed_offsets(self, group: str) -> dict[PartitionKey, int]:
        with self._lock:
            return dict(self._offsets.get(group, {}))

    def table_bytes(self, user_id: str, version: str | TableVersion) -> int:
        name = version.name if isinstance(version, TableVersion) else version
        with self._lock:
            return len(self._blobs.get((name, user_id), b""))

    def users(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._seq))

    def _check_params(self, version: str, params: dict[str, str]) -> None:
        with self._lock:
            stored = self._params.setdefault(version, dict(params))
        for k, v in params.items():
            if stored.get(k) != v:
                raise TableVersionMismatch(version, k, str(stored.get(k)), v)

    def _read_offsets(self, group: str, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        with self._lock:
            stored = self._offsets.get(group, {})
            return {k: stored[k] for k in keys if k in stored}

    def _read_users(self, n_new: dict[str, int], versions: list[str]) -> dict[str, _UserSnapshot]:
        with self._lock:
            out = {}
            for u, n in n_new.items():
                seq = self._seq.get(u, deque())
                out[u] = _UserSnapshot(
                    n_total=self._n_total.get(u, 0),
                    seq_len=len(seq),
                    head=[seq[i] for i in range(min(n, len(seq)))],
                    blobs={v: self._blobs.get((v, u)) for v in versions},
                )
            return out

    def _read_sequences(self, user_ids: list[str], last_n: int | None = None) -> list[tuple[int, list[str]]]:
        with self._lock:
            out = []
            for u in user_ids:
                seq = list(self._seq.get(u, ()))
                out.append((self._n_total.get(u, 0), seq[-last_n:] if last_n else seq))
            return out

    def _read_blobs(self, user_ids: list[str], version: str) -> list[bytes | None]:
        with self._lock:
            return [self._blobs.get((version, u)) for u in user_ids]

    def _write(
        self,
        group: str,
        expected_offsets: dict[PartitionKey, int],
        new_offsets: dict[PartitionKey, int],
        writes: list[_UserWrite],
    ) -> bool:
        with self._lock:
            stored = self._offsets.setdefault(group, {})
            if any(stored.get(k) != expected_offsets.get(k) for k in new_offsets):
                return False
            if any(self._n_total.get(w.user_id, 0) != w.expected_n_total for w in writes):
                return False
            for w in writes:
                seq = self._seq.setdefault(w.user_id, deque())
                seq.extend(w.new_items)
                while len(seq) > self.max_seq_len:
                    seq.popleft()
                self._n_total[w.user_id] = w.expected_n_total + len(w.new_items)
                for v, blob in w.blobs.items():
                    self._blobs[(v, w.user_id)] = blob
            stored.update(new_offsets)
            return True

    def _write_tables(self, version: str, rows: list[tuple[str, int, bytes]]) -> list[bool]:
        with self._lock:
            ok = []
            for u, n_total, blob in rows:
                good = self._n_total.get(u, 0) == n_total
                if good:
                    self._blobs[(version, u)] = blob
                ok.append(good)
            return ok
