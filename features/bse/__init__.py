"""BSE: per-user behaviour sequences and SDIM bucket-sum tables (DESIGN.md, "SDIM and the BSE service")."""

from features.bse.embeddings import ArrayItemEmbeddings, ItemEmbeddings, stable_bucket
from features.bse.memory import InMemoryBseStore
from features.bse.redis_store import BseKeys, RedisBseStore
from features.bse.store import DEFAULT_MAX_SEQ_LEN, BseStore, interest_from_table
from features.bse.types import ApplyResult, Behaviour, RebuildResult
from features.bse.versions import DEFAULT_ITEM_BITS, TableVersion

SequenceStore = BseStore  # the name issue 4 uses for the same interface

__all__ = [
    "ApplyResult",
    "ArrayItemEmbeddings",
    "Behaviour",
    "BseKeys",
    "BseStore",
    "DEFAULT_ITEM_BITS",
    "DEFAULT_MAX_SEQ_LEN",
    "InMemoryBseStore",
    "ItemEmbeddings",
    "RebuildResult",
    "RedisBseStore",
    "SequenceStore",
    "TableVersion",
    "interest_from_table",
    "stable_bucket",
]
