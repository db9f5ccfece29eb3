import os

# Tests never write into a user's ~/.cache unless they asked for it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hasher():
    """The SDIM hasher of the BSE tests: small dim keeps the naive loop fast; 16 signatures x 8
    buckets as in production."""
    from models.sdim_hash import SdimConfig, SdimHasher

    return SdimHasher(SdimConfig(dim=16, n_hashes=48, tau=3, seed=7))


@pytest.fixture(scope="session")
def item_embeddings():
    """300 random item embeddings (d=16) with 8 hashed OOV rows."""
    from features.bse import ArrayItemEmbeddings

    return ArrayItemEmbeddings.random(n_items=300, dim=16, n_oov=8, seed=3)
