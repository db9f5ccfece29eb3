"""Fast item-feature read path for serving.

Feast's `get_online_features` costs milliseconds per call for 500 entities (Python-side entity
key serialisation, protobuf decoding, DataFrame/dict building). Serving needs a fixed numeric
vector per candidate, so the feature writer also stores one packed blob per item:

    {prefix}:if:{item_id} = header `<IQ` (schema crc32, event time ms) + float32[F] in ITEM_FEATURES order

and the reader fetches N items with one MGET and decodes them with numpy. An optional in-replica
TTL cache skips Redis for hot items (the candidate sets of consecutive requests overlap a lot).
Feast stays the source of truth and the offline/training path; this is a read-optimised copy.
"""

from __future__ import annotations

import logging
import struct
import time
import zlib
from typing import Protocol, Sequence

import numpy as np
import pandas as pd
import redis

from features.errors import ItemFeatureSchemaMismatch
from recstream.redis_io import is_cluster, redis_client
from features.repo.definitions import ITEM_FEATURES, TIMESTAMP_FIELD

log = logging.getLogger(__name__)

ITEM_FEATURE_NAMES: tuple[str, ...] = tuple(ITEM_FEATURES)
_HEADER = struct.Struct("<IQ")  # schema crc32, event time (epoch ms)


def schema_id(names: Sequence[str]) -> int:
    """crc32 of the ordered feature names: a reader refuses blobs written with another layout."""
    return zlib.crc32("\x1f".join(names).encode())


class ItemFeatureReader(Protocol):
    names: tuple[str, ...]

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        """Args: item_ids (N,). Returns: (N, F) float32 in `names` order; NaN rows for unknown items."""
        ...


def pack_item_rows(df: pd.DataFrame, names: Sequence[str] = ITEM_FEATURE_NAMES) -> dict[str, bytes]:
    """Rows (item_id, event_timestamp, *names) -> {item_id: blob}; the latest row per item wins."""
    sid = schema_id(names)
    ts_ms = (pd.to_datetime(df[TIMESTAMP_FIELD], utc=True).astype("int64") // 1_000_000).to_numpy()
    values = df[list(names)].to_numpy(dtype=np.float32, na_value=np.nan)  # (n, F)
    order = np.argsort(ts_ms, kind="stable")
    out: dict[str, bytes] = {}
    ids = df["item_id"].astype(str).to_numpy()
    for i in order:  # later rows overwrite earlier ones
        out[ids[i]] = _HEADER.pack(sid, int(ts_ms[i])) + values[i].tobytes()
    return out


def item_features_key(prefix: str, item_id: str) -> str:
    """An item's blob: under the plain prefix in either KeyLayout (absolute values, one key per item,
    written by one publisher: no partition's transaction covers it)."""
    return f"{prefix}:if:{item_id}"


class RedisItemFeatures:
    """Writer and fast reader of packed item-feature blobs.

    Args:
        client: redis-py client (decode_responses=False).
        prefix: key prefix (Settings.redis_prefix).
        names: feature layout; defaults to the Feast item view's features.
        cache_ttl_s: in-replica cache lifetime; 0 disables the cache.
        cache_max_items: cache bound; the cache is cleared when it is exceeded (cheap, rare).
        key_ttl_s: Redis expiry of the blobs (None: none), e.g. the Feast view's TTL.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "rs",
        names: Sequence[str] = ITEM_FEATURE_NAMES,
        cache_ttl_s: float = 0.0,
        cache_max_items: int = 200_000,
        key_ttl_s: int | None = None,
    ):
        self.r = client
        self.prefix = prefix
        self.names = tuple(names)
        self._sid = schema_id(self.names)
        self._row_bytes = _HEADER.size + 4 * len(self.names)
        self.cache_ttl_s = cache_ttl_s
        self.cache_max_items = cache_max_items
        self.key_ttl_s = key_ttl_s
        self._cache: dict[str, tuple[float, np.ndarray]] = {}
        # Blobs are absolute values, one key per item, so a read or write across items need not be
        # atomic: on Redis Cluster the client splits it by slot (plain MGET/MSET must stay in one).
        self._mget = client.mget_nonatomic if is_cluster(client) else client.mget
        self._mset = client.mset_nonatomic if is_cluster(client) else None

    @classmethod
    def from_url(cls, url: str, prefix: str = "rs", **kwargs) -> "RedisItemFeatures":
        return cls(redis_client(url, decode_responses=False), prefix=prefix, **kwargs)

    def _key(self, item_id: str) -> str:
        return item_features_key(self.prefix, item_id)

    def write(self, df: pd.DataFrame) -> int:
        """Store the latest row per item (columns item_id, event_timestamp, *names); one pipeline.

        Returns:
            number of items written.
        """
        blobs = pack_item_rows(df, self.names)
        if self._mset is not None and not self.key_ttl_s:
            self._mset({self._key(i): b for i, b in blobs.items()})
            return len(blobs)
        pipe = self.r.pipeline(transaction=False)
        if self.key_ttl_s:
            for item_id, blob in blobs.items():
                pipe.set(self._key(item_id), blob, ex=self.key_ttl_s)
        else:
            pipe.mset({self._key(i): b for i, b in blobs.items()})
        pipe.execute()
        return len(blobs)

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        """Args: item_ids (N,). Returns: (N, F) float32; NaN rows for items never written.

        One MGET for all cache misses (zero round trips when all are cached).
        """
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        now = time.monotonic()
        miss_idx: list[int] = []
        if self.cache_ttl_s > 0:
            for i, item_id in enumerate(item_ids):
                hit = self._cache.get(item_id)
                if hit is not None and hit[0] > now:
                    out[i] = hit[1]
                else:
                    miss_idx.append(i)
        else:
            miss_idx = list(range(len(item_ids)))
        if not miss_idx:
            return out
        blobs = self._mget([self._key(item_ids[i]) for i in miss_idx])
        present = [(i, b) for i, b in zip(miss_idx, blobs) if b is not None]
        if present:
            buf = b"".join(b for _, b in present)
            if len(buf) != self._row_bytes * len(present):
                bad = next(item_ids[i] for i, b in present if len(b) != self._row_bytes)
                raise ItemFeatureSchemaMismatch(bad, f"{len(buf)} bytes", f"{self._row_bytes} bytes per item")
            rows = np.frombuffer(buf, dtype=np.uint8).reshape(len(present), self._row_bytes)
            sids = rows[:, :4].copy().view("<u4").ravel()
            if (sids != self._sid).any():
                bad = item_ids[present[int(np.flatnonzero(sids != self._sid)[0])][0]]
                raise ItemFeatureSchemaMismatch(bad, str(int(sids[sids != self._sid][0])), str(self._sid))
            values = rows[:, _HEADER.size :].copy().view("<f4")  # (n, F)
            idx = np.fromiter((i for i, _ in present), dtype=np.int64, count=len(present))
            out[idx] = values
            if self.cache_ttl_s > 0:
                if len(self._cache) + len(present) > self.cache_max_items:
                    self._cache.clear()
                expiry = now + self.cache_ttl_s
                for k, i in enumerate(idx):
                    self._cache[item_ids[i]] = (expiry, values[k])
        return out

    def event_time_ms(self, item_ids: Sequence[str]) -> list[int | None]:
        """Event time of each stored row (for freshness metrics)."""
        return [
            None if b is None else _HEADER.unpack_from(b)[1]
            for b in self._mget([self._key(i) for i in item_ids])
        ]


class InMemoryItemFeatures:
    """Same read/write contract in a dict (unit tests)."""

    def __init__(self, names: Sequence[str] = ITEM_FEATURE_NAMES):
        self.names = tuple(names)
        self._rows: dict[str, np.ndarray] = {}

    def write(self, df: pd.DataFrame) -> int:
        blobs = pack_item_rows(df, self.names)
        for item_id, blob in blobs.items():
            self._rows[item_id] = np.frombuffer(blob[_HEADER.size :], dtype="<f4").copy()
        return len(blobs)

    def read(self, item_ids: Sequence[str]) -> np.ndarray:
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        for i, item_id in enumerate(item_ids):
            row = self._rows.get(item_id)
            if row is not None:
                out[i] = row
        return out
