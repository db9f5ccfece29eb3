"""The BSE lookup as its own Ray Serve deployment answers like the in-process client and the naive sum."""

from __future__ import annotations

import numpy as np
import pytest

from features.bse import Behaviour, RedisBseStore, TableVersion
from services.bse_lookup import BseLookup, bse_lookup_deployment
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines.stream.bse_encoder import load_item_embeddings
from tests.sdim_reference import naive_sdim

pytestmark = pytest.mark.integration


def test_lookup_deployment_matches_in_process_and_naive(settings, ray_serve):
    from ray import serve

    emb = load_item_embeddings("random:500:3")
    hasher = SdimHasher(SdimConfig(dim=emb.dim))
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                   versions=[TableVersion(hasher, emb, model_version="v1")])
    rng = np.random.default_rng(0)
    seq = [f"i{k}" for k in rng.integers(0, 500, size=300)]
    store.apply_batch([Behaviour("alice", i) for i in seq])
    cand_ids = [f"i{k}" for k in range(50)]
    cands = emb.lookup(cand_ids)  # (50, d)

    local = BseLookup(settings.redis_url, settings.redis_prefix, {"v1": SdimConfig(dim=emb.dim)})
    in_process = local.lookup("alice", "v1", cands)  # (50, d)

    name = settings.redis_prefix + "bse"
    handle = serve.run(bse_lookup_deployment.bind(settings.redis_url, settings.redis_prefix, {"v1": {"dim": emb.dim}}),
                       name=name, route_prefix=None)
    try:
        remote = handle.lookup.remote("alice", "v1", cands).result(timeout_s=60)
        cold = handle.lookup.remote("nobody", "v1", cands).result(timeout_s=60)
    finally:
        serve.delete(name)

    np.testing.assert_allclose(remote, in_process, rtol=0, atol=0)
    # The stored tables are 7-bit quantised sums: close to the float64 naive computation, not equal.
    np.testing.assert_allclose(in_process, naive_sdim(emb.lookup(seq), cands, hasher), atol=5e-3)
    assert not np.any(cold)  # unknown user: zero interest, not an error
