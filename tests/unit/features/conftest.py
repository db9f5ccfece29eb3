"""Fixtures for the in-memory feature tests (no servers); hasher and item_embeddings: tests/conftest.py."""

from __future__ import annotations

import pytest

from features.bse import InMemoryBseStore, TableVersion


@pytest.fixture
def bse_store(hasher, item_embeddings) -> InMemoryBseStore:
    return InMemoryBseStore([TableVersion(hasher, item_embeddings, item_bits=16)], max_seq_len=40)
