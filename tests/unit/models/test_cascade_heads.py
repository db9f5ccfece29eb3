"""Issue 22 model heads: the ranker's listwise order head + like head over candidate sets, HCN's
candidate-set softmax; both equal their serving paths."""

import pytest
import torch

from models import build_model

torch.set_num_threads(1)
DIMS = {"n_users": 20, "n_items": 50, "n_item_cats": 4}


def _batch(b: int = 6, c: int = 5, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, 50, (b, length), generator=g)
    hist[0, :5] = 0  # padding
    cands = torch.stack([torch.randperm(49, generator=g)[:c] + 1 for _ in range(b)])
    return {"user": torch.randint(1, 20, (b,), generator=g), "hist": hist, "item": cands[:, 0], "cands": cands,
            "label": torch.tensor([1.0, 0.0] * (b // 2))}


def _ranker(listwise: bool = True):
    torch.manual_seed(0)
    return build_model("ranker", {**DIMS, "dim": 16, "long_len": 12, "short_len": 6, "din_hidden": (8,),
                                  "mlp_hidden": (16,), "sdim": {"dim": 16, "n_hashes": 8, "tau": 2},
                                  "listwise": listwise}).eval()


def test_listwise_forward_returns_both_heads_and_the_order_head_matches_serving():
    m, batch = _ranker(), _batch()
    out = m(batch)
    assert out["score"].shape == out["prob"].shape == (6, 5)
    assert torch.isfinite(out["loss"]) and out["order_loss"] > 0 and out["like_loss"] > 0
    with torch.inference_mode():
        for r in range(6):
            args = (batch["user"][r : r + 1], batch["hist"][r : r + 1], batch["cands"][r])
            torch.testing.assert_close(m.score_user(*args, head="order"), out["score"][r], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.score_user(*args), out["logit"][r], atol=1e-5, rtol=1e-5)


def test_listwise_loss_is_softmax_over_the_set_plus_weighted_like_bce():
    m, batch = _ranker(), _batch()
    out = m(batch)
    ce = torch.nn.functional.cross_entropy(out["score"], torch.zeros(6, dtype=torch.long))
    like_t = torch.zeros(6, 5)
    like_t[:, 0] = batch["label"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], like_t)
    torch.testing.assert_close(out["loss"], ce + m.config.like_weight * bce)


def test_pointwise_ranker_refuses_candidate_sets_and_keeps_its_parameters():
    m = _ranker(listwise=False)
    assert m.order_head is None
    with pytest.raises(ValueError, match="listwise=True"):
        m(_batch())


def test_hcn_candidate_softmax_scores_equal_catalogue_scores():
    torch.manual_seed(0)
    m = build_model("hcn", {**DIMS, "dim": 16, "long_len": 12, "short_len": 4, "long_levels": (2,), "n_iters": 1}).eval()
    batch = _batch()
    with torch.no_grad():
        u, _ = m.interests(batch)
        full = m.score(u, m.item_vectors(torch.arange(50)))  # (B, 50)
        torch.testing.assert_close(m.score_sets(u, batch["cands"]), full.gather(1, batch["cands"]), atol=1e-5, rtol=1e-5)
    m.train()
    with_sets = m(batch)
    without = m({k: v for k, v in batch.items() if k != "cands"})
    assert "cand_loss" in with_sets and "cand_loss" not in without
