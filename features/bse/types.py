"""BSE data types: a behaviour to apply, the results of an apply and a rebuild, and the snapshot
and write records a backend exchanges with the store algorithm (features/bse/store.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PartitionKey = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One behaviour to append to a user's sequence.

    Args:
        user_id: the user.
        item_id: the item the user engaged with.
        topic, partition, offset: the Kafka record it came from; None for non-Kafka sources
            (backfills, tests), which are then never de-duplicated.
    """

    user_id: str
    item_id: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class ApplyResult:
    n_applied: int  # behaviours appended
    n_skipped: int  # behaviours at or below the stored offset (redelivered)
    n_users: int
    n_evicted: int
    n_attempts: int
    offsets: dict[PartitionKey, int] = field(default_factory=dict)  # stored next offsets after the apply


@dataclass(frozen=True)
class RebuildResult:
    version: str
    n_users: int
    n_behaviours: int
    n_retried: int


# ---- backend snapshot / write records -------------------------------------------------------


@dataclass
class _UserSnapshot:
    n_total: int  # behaviours ever appended: the compare-and-set token
    seq_len: int
    head: list[str]  # the oldest min(seq_len, n_new) items (eviction candidates)
    blobs: dict[str, bytes | None]  # version name -> stored blob
    full_seq: list[str] | None = None  # filled only when a version's table must be built from scratch


@dataclass
class _UserWrite:
    user_id: str
    expected_n_total: int
    new_items: list[str]
    blobs: dict[str, bytes]
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # decoded blobs, for the table cache
