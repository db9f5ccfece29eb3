"""Item embeddings for the BSE: the deployed ranker's item table, looked up by item id."""

from __future__ import annotations

import hashlib
from itertools import repeat
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class ItemEmbeddings(Protocol):
    """What the BSE needs from an embedding table.

    Attributes:
        dim: embedding width d.
        max_abs: bound on |component| over every row (incl. OOV rows); fixes the integer
            quantisation step of this version's tables, so all writers must agree on it.
    """

    dim: int
    max_abs: float

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """Args: item_ids (n,). Returns: (n, d) float32; unknown ids map to hashed OOV rows."""
        ...


def stable_bucket(key: str, n_buckets: int) -> int:
    """Process-independent hash of `key` into [0, n_buckets) (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_buckets


class ArrayItemEmbeddings:
    """An in-memory table: known ids get their row, unknown ids a hashed OOV row.

    Args:
        item_ids: (V,) vocabulary; row i of `table` belongs to item_ids[i].
        table: (V + n_oov, d) float; the last `n_oov` rows are OOV buckets.
        n_oov: number of OOV rows (>= 1).
    """

    def __init__(self, item_ids: Sequence[str], table: np.ndarray, n_oov: int):
        if n_oov < 1:
            raise ValueError(f"n_oov ({n_oov}) must be >= 1")
        if table.ndim != 2 or table.shape[0] != len(item_ids) + n_oov:
            raise ValueError(
                f"table shape {table.shape} must be (len(item_ids) + n_oov, d) = ({len(item_ids) + n_oov}, d)"
            )
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.dim = int(table.shape[1])
        self.n_oov = n_oov
        self._index = {item_id: i for i, item_id in enumerate(item_ids)}
        self._n_known = len(item_ids)
        self.max_abs = float(np.abs(self.table).max())

    @classmethod
    def random(cls, n_items: int, dim: int = 64, n_oov: int = 16, seed: int = 0, prefix: str = "i") -> "ArrayItemEmbeddings":
        """Gaussian table for tests and demos, ids f"{prefix}{k}"."""
        rng = np.random.default_rng(seed)
        table = rng.standard_normal((n_items + n_oov, dim)).astype(np.float32) * 0.1
        return cls([f"{prefix}{k}" for k in range(n_items)], table, n_oov)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n,) ids -> (n,) int64 row indices."""
        rows = np.fromiter(map(self._index.get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))
        for k in np.flatnonzero(rows < 0).tolist():  # unknown ids: hashed OOV rows
            rows[k] = self._n_known + stable_bucket(item_ids[k], self.n_oov)
        return rows

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.table[self.rows(item_ids)]


class VocabItemEmbeddings(ArrayItemEmbeddings):
    """The deployed ranker's item table with the ranker's own id -> row mapping (its Vocab), so
    an id the ranker never saw lands in the same hashed OOV row here as in the ranker.

    Args:
        table: (vocab.size, d) the ranker's item embedding weights (row 0 = padding).
        vocab: models.layers.Vocab of the item ids (known ids in rows 1..V, OOV rows after).
    """

    def __init__(self, table: np.ndarray, vocab):
        if table.ndim != 2 or table.shape[0] != vocab.size:
            raise ValueError(f"item table shape {table.shape} must be (vocab.size, d) = ({vocab.size}, d)")
        # ArrayItemEmbeddings indexes known ids from row 0; drop the padding row and keep order.
        super().__init__(list(vocab.tokens), table[1:], vocab.n_oov_buckets)
        self._vocab = vocab

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        return self._vocab.encode(item_ids) - 1  # the ranker's rows, shifted past the padding row
