"""SDIM: the training path and the served bucket path both equal the definition, computed by an
independent plain loop (tests/sdim_reference.py)."""

import numpy as np
import pytest
import torch

from models.sdim import SdimInterest, build_bucket_tables, normalize_tables, sdim_interest_from_tables
from models.sdim_hash import SdimConfig, SdimHasher
from tests.sdim_reference import naive_sdim

torch.set_num_threads(1)


@pytest.fixture
def setup():
    cfg = SdimConfig(dim=16, n_hashes=12, tau=3, seed=3)
    rng = np.random.default_rng(0)
    return SdimHasher(cfg), rng.standard_normal((40, 16)).astype(np.float32), rng.standard_normal((7, 16)).astype(np.float32)


def test_bucket_tables_path_equals_naive(setup):
    hasher, seq, cands = setup
    tables, counts = build_bucket_tables(seq, hasher)
    assert tables.shape == (4, 8, 16) and counts.shape == (4, 8)
    assert (counts.sum(1) == len(seq)).all()  # every behaviour lands in exactly one bucket per signature
    got = sdim_interest_from_tables(tables, hasher.signatures_np(cands))
    np.testing.assert_allclose(got, naive_sdim(seq, cands, hasher), rtol=1e-5, atol=1e-6)
    # torch tables give the same answer
    got_t = sdim_interest_from_tables(torch.from_numpy(tables), torch.from_numpy(hasher.signatures_np(cands)))
    np.testing.assert_allclose(got_t.numpy(), got, rtol=1e-5, atol=1e-6)
    # pre-normalised tables (what a server may cache) too
    np.testing.assert_allclose(sdim_interest_from_tables(normalize_tables(tables), hasher.signatures_np(cands), normalized=True), got, atol=1e-6)


def test_normalisation_is_not_skipped(setup):
    """The public port without per-signature normalisation gives a different answer: this test would catch it."""
    hasher, seq, cands = setup
    tables, _ = build_bucket_tables(seq, hasher)
    unnormalised = tables[np.arange(4), hasher.signatures_np(cands)].mean(1)
    assert not np.allclose(unnormalised, naive_sdim(seq, cands, hasher), atol=1e-3)


def test_training_path_equals_naive_and_masks_padding(setup):
    hasher, seq, cands = setup
    layer = SdimInterest(hasher.config)
    L = len(seq)
    padded = np.concatenate([np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32), seq])  # junk in padding
    mask = torch.tensor([False] * 5 + [True] * L)
    seq_t = torch.from_numpy(padded).expand(len(cands), -1, -1)  # (N, 5+L, d)
    got = layer(torch.from_numpy(cands), seq_t, mask.expand(len(cands), -1))
    np.testing.assert_allclose(got.numpy(), naive_sdim(seq, cands, hasher), rtol=1e-5, atol=1e-6)


def test_empty_bucket_gives_zero_vector():
    hasher = SdimHasher(SdimConfig(dim=8, n_hashes=6, tau=3, seed=1))
    seq = np.ones((3, 8), dtype=np.float32)  # one direction: one bucket per signature
    cand = -np.ones((1, 8), dtype=np.float32)  # the opposite direction: all bits differ
    tables, _ = build_bucket_tables(seq, hasher)
    np.testing.assert_array_equal(sdim_interest_from_tables(tables, hasher.signatures_np(cand)), np.zeros((1, 8)))
    same = sdim_interest_from_tables(tables, hasher.signatures_np(seq[:1]))
    np.testing.assert_allclose(same, seq[:1] / np.linalg.norm(seq[0]), rtol=1e-6)


def test_gradients_flow_into_behaviours(setup):
    hasher, seq, cands = setup
    seq_t = torch.from_numpy(seq).unsqueeze(0).requires_grad_(True)
    out = SdimInterest(hasher.config)(torch.from_numpy(cands[:1]), seq_t, torch.ones(1, len(seq), dtype=torch.bool))
    out.sum().backward()
    assert seq_t.grad is not None and seq_t.grad.abs().sum() > 0


def test_ranker_scores_equal_with_bse_tables_and_training_path():
    """Train/serve parity: the ranker fed the BSE's bucket-table interest gives the training-path logits."""
    from models import build_model

    torch.manual_seed(0)
    cfg = SdimConfig(dim=16)
    ranker = build_model("ranker", {"n_users": 4, "n_items": 30, "n_item_cats": 4, "dim": 16, "sdim": cfg,
                                    "long_len": 25, "short_len": 5}).eval()
    ranker.set_item_categories(torch.arange(30) % 4)
    hist = torch.randint(1, 30, (1, 25))
    cands = torch.arange(1, 30)
    batch = {"user": torch.ones(29, dtype=torch.long), "item": cands, "hist": hist.expand(29, -1)}
    table = ranker.item_embedding_table()  # what the BSE hashes
    hasher = SdimHasher(cfg)
    tables, _ = build_bucket_tables(table[hist[0].numpy()], hasher)
    served = sdim_interest_from_tables(torch.from_numpy(tables), hasher.signatures_np(table[cands.numpy()]))
    with torch.no_grad():
        torch.testing.assert_close(ranker({**batch, "long_interest": served})["logit"], ranker(batch)["logit"],
                                   rtol=1e-4, atol=1e-5)
