"""Fixtures for the in-memory feature tests (no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from features.bse import ArrayItemEmbeddings, InMemoryBseStore, TableVersion
from models.sdim_hash import SdimConfig, SdimHasher


@pytest.fixture(scope="session")
def hasher() -> SdimHasher:
    # small dim keeps the naive loop fast; 16 signatures x 8 buckets as in production
    return SdimHasher(SdimConfig(dim=16, n_hashes=48, tau=3, seed=7))


@pytest.fixture(scope="session")
def item_embeddings() -> ArrayItemEmbeddings:
    return ArrayItemEmbeddings.random(n_items=300, dim=16, n_oov=8, seed=3)


@pytest.fixture
def bse_store(hasher, item_embeddings) -> InMemoryBseStore:
    return InMemoryBseStore([TableVersion(hasher, item_embeddings, item_bits=16)], max_seq_len=40)
