"""BSE table versions and their item codes.

`TableVersion` names one kind of SDIM table (hasher, item embeddings, quantisation width);
`ItemCodes` is its per-version memo of what the BSE needs per item: its SDIM signatures and
quantised embedding. Item embeddings are fixed per table version, so sig(item) and q(item) are computed once per
item (hashing each item once, in the batch that first sees it) and then gathered by row. Beyond
speed this also makes add and evict of one item use the very same signatures in a process.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from features.bse import _codec
from features.bse.embeddings import ArrayItemEmbeddings, ItemEmbeddings
from features.errors import MissingEmbeddings
from models.sdim_hash import SdimHasher

DEFAULT_ITEM_BITS = 7  # 8 bits costs ~1 KB more per user at L=10k and crosses 16 KB; see _codec


@dataclass(frozen=True)
class TableVersion:
    """One kind of SDIM table: which hasher and which item embeddings produced the sums.

    Tables are keyed by `name`, which joins the ranker's `model_version`, the hasher's version
    and the quantisation width: tables built with other embeddings or another hasher are not
    interchangeable.

    Args:
        hasher: the seeded SimHash shared with the trainer and ranker.
        embeddings: the ranker's item embeddings; None for a lookup-only client.
        model_version: the ranker version whose embedding table feeds the sums.
        item_bits: integer width of quantised item embeddings (see features.bse._codec).
    """

    hasher: SdimHasher
    embeddings: ItemEmbeddings | None = None
    model_version: str = "base"
    item_bits: int = DEFAULT_ITEM_BITS

    @property
    def name(self) -> str:
        return f"{self.model_version}+{self.hasher.version}+q{self.item_bits}"

    @property
    def shape(self) -> tuple[int, int, int]:
        c = self.hasher.config
        return (c.n_signatures, c.n_buckets, c.dim)

    @property
    def step(self) -> float:
        if self.embeddings is None:
            raise MissingEmbeddings(self.name)
        return _codec.quant_step(self.embeddings.max_abs, self.item_bits)

    @functools.cached_property
    def codes(self) -> ItemCodes:
        """Memoised signatures and quantised embeddings per item (embeddings are fixed per version)."""
        if self.embeddings is None:
            raise MissingEmbeddings(self.name)
        return ItemCodes(self)

    def item_signatures(self, item_ids: Sequence[str]) -> np.ndarray:
        """(N, S) int64 signatures of items by id, each item hashed once per version (the
        candidate path: pass them to `BseStore.lookup(..., cand_sigs=...)`)."""
        return self.codes.signatures(item_ids)

    def params(self) -> dict[str, str]:
        """What every writer of this version must agree on (checked against the store)."""
        c = self.hasher.config
        return {
            "hasher": self.hasher.version,
            "shape": "x".join(map(str, self.shape)),
            "item_bits": str(self.item_bits),
            "step": repr(self.step),
            "seed": str(c.seed),
        }



class ItemCodes:
    """sig (S,) and q (d,) per item of one TableVersion.

    ArrayItemEmbeddings are memoised by table row (unknown ids share their OOV row); any other
    ItemEmbeddings by item id.
    """

    _GROW = 4096

    def __init__(self, version: "TableVersion"):
        emb = version.embeddings
        if emb is None:
            raise ValueError(f"table version {version.name} has no embeddings")
        self._emb = emb
        self._hasher = version.hasher
        self._step = version.step
        self._bits = version.item_bits
        n_sig, n_buckets, dim = version.shape
        self._sig_dtype = np.uint8 if n_buckets <= 256 else np.int32
        self._q_dtype = np.int8 if version.item_bits <= 8 else np.int16
        self._by_row = isinstance(emb, ArrayItemEmbeddings)
        n = emb.table.shape[0] if self._by_row else self._GROW
        # np.zeros maps lazily: rows never used cost no resident memory
        self._sig = np.zeros((n, n_sig), dtype=self._sig_dtype)
        self._q = np.zeros((n, dim), dtype=self._q_dtype)
        self._done = np.zeros(n, dtype=bool)
        self._slot: dict[str, int] = {}
        self._lock = threading.Lock()
        self.n_computed = 0  # items (rows) hashed so far

    def _fill(self, rows: np.ndarray, emb: np.ndarray) -> None:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self._q.shape[1]:
            from features.errors import EmbeddingDimMismatch

            raise EmbeddingDimMismatch("item codes", self._q.shape[1], tuple(emb.shape))
        self._sig[rows] = self._hasher.signatures_np(emb)
        self._q[rows] = _codec.quantize(emb, self._step, self._bits)
        self._done[rows] = True
        self.n_computed += len(rows)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n,) item ids -> (n,) memo rows, computing the codes of rows not seen before."""
        if self._by_row:
            rows = self._emb.rows(item_ids)
            missing = rows[~self._done[rows]]
            if len(missing):
                with self._lock:
                    missing = np.unique(missing)
                    self._fill(missing, self._emb.table[missing])
            return rows
        with self._lock:
            slot = self._slot
            new = [i for i in dict.fromkeys(item_ids) if i not in slot]
            if new:
                base = len(slot)
                if base + len(new) > len(self._done):
                    n = max(2 * len(self._done), base + len(new))
                    self._sig = np.resize(self._sig, (n, self._sig.shape[1]))
                    self._q = np.resize(self._q, (n, self._q.shape[1]))
                    done = np.zeros(n, dtype=bool)
                    done[:base] = True
                    self._done = done
                rows = np.arange(base, base + len(new))
                self._fill(rows, self._emb.lookup(new))
                slot.update(zip(new, rows.tolist()))
            return np.fromiter((slot[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def codes(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns ((n, S) signatures, (n, d) quantised embeddings) of the items."""
        rows = self.rows(item_ids)
        return self._sig[rows], self._q[rows]

    def signatures(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, S) int64 signatures of the items (memoised)."""
        return self._sig[self.rows(item_ids)].astype(np.int64)
