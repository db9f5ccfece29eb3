"""The baselines readers expect next to the models: count popularity, ItemKNN and BPR-MF on
retrieval, and the collision-probability target attention that SDIM approximates."""

import math

import numpy as np
import pytest
import torch

from models import build_model
from models.layers import CollisionTargetAttention
from models.sdim import SdimInterest
from models.sdim_hash import SdimConfig
from pipelines.training.loop import TrainConfig, fit
from pipelines.training.metrics import evaluate_retrieval
from tests.builders import leave_last_out_samples

torch.set_num_threads(1)


def _interactions(seed: int = 0, n_users: int = 30, n_items: int = 25, n: int = 300):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(1, n_users + 1, n)), torch.as_tensor(rng.integers(1, n_items + 1, n))


def test_pop_count_scores_are_the_training_counts():
    users, items = _interactions()
    model = build_model("pop_count", {"n_items": 28})
    model.fit_interactions(users, items)
    scores = model.score_catalogue({"item": torch.zeros(3)}, torch.arange(1, 28))
    expected = np.bincount(items.numpy(), minlength=28)[1:28].astype(np.float32)
    assert scores.shape == (3, 27)
    np.testing.assert_array_equal(scores.numpy(), np.broadcast_to(expected, (3, 27)))


def _plain_cosine(users, items, n_items: int, shrink: float) -> np.ndarray:
    """users in common / (sqrt |U_i| sqrt |U_j| + shrink), by sets; 0 on the diagonal."""
    who = {i: {int(u) for u, it in zip(users, items) if int(it) == i} for i in range(n_items)}
    sim = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j and who[i] and who[j]:
                sim[i, j] = len(who[i] & who[j]) / (math.sqrt(len(who[i])) * math.sqrt(len(who[j])) + shrink)
    return sim


@pytest.mark.parametrize("shrink", [0.0, 2.0])
def test_itemknn_equals_a_plain_loop(shrink):
    users, items = _interactions(seed=1)
    n_items = 28
    sim = _plain_cosine(users, items, n_items, shrink)
    model = build_model("itemknn", {"n_items": n_items, "k_neighbours": n_items, "shrink": shrink, "hist_len": 6})
    model.fit_interactions(users, items)
    hist = torch.tensor([[0, 0, 3, 5, 5, 9], [1, 2, 3, 4, 6, 8]])  # right-aligned, 0 = pad; a repeat counts once
    cat = torch.arange(1, n_items)
    got = model.score_catalogue({"hist": hist}, cat).numpy()
    for r, h in enumerate(hist.tolist()):
        seen = {i for i in h if i > 0}
        want = [sum(sim[i, j] for i in seen) for j in cat.tolist()]
        np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-6)
    # k neighbours: each target item keeps exactly its k largest similarities (which of equal
    # ones is kept is arbitrary), the rest are 0
    small = build_model("itemknn", {"n_items": n_items, "k_neighbours": 4, "shrink": shrink})
    small.fit_interactions(users, items)
    kept = small.sim.numpy()
    for j in range(n_items):
        np.testing.assert_allclose(np.sort(kept[:, j])[::-1][:4], np.sort(sim[:, j])[::-1][:4], rtol=1e-5, atol=1e-6)
        assert (kept[:, j] > 0).sum() <= 4
        nz = kept[:, j] > 0
        np.testing.assert_allclose(kept[nz, j], sim[nz, j], rtol=1e-5)


def _two_group_retrieval(n_users: int = 120, n_items: int = 40, per_user: int = 10, seed: int = 0):
    """Half the users take items 1-20, half 21-40 (uniformly): popularity is flat, only who the
    user is tells the groups apart."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    half = n_items // 2
    items = rng.integers(1, half + 1, len(users)) + np.where(users % 2 == 0, half, 0)
    return leave_last_out_samples(users, items, per_user, n_items)


def test_bpr_learns_the_user_groups_in_the_shared_loop(tmp_path):
    """Random ranking: Recall@10 = 10/40 (minus the masked seen items' share). BPR must put the
    user's own half first: Recall@10 near 10/20 or better."""
    train, test, catalogue = _two_group_retrieval()
    torch.manual_seed(0)
    model = build_model("bpr", {"n_users": 122, "n_items": 42, "dim": 8, "reg": 1e-4})
    before = evaluate_retrieval(model, test, catalogue, ks=(10,))["recall_at_10"]
    fit(model, train, TrainConfig(epochs=15, batch_size=64, lr=3e-2, progress=False, checkpoint_dir=str(tmp_path)))
    got = evaluate_retrieval(model, test, catalogue, ks=(10,))["recall_at_10"]
    assert got >= 0.45 and got >= before + 0.15, f"BPR Recall@10 {got:.3f}, untrained {before:.3f}"


def test_collision_attention_is_the_plain_formula():
    torch.manual_seed(0)
    q, k = torch.randn(3, 8), torch.randn(3, 7, 8)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # nothing to attend to: zeros
    got = CollisionTargetAttention(tau=3)(q, k, mask)
    for b in range(3):
        w = []
        for j in range(7):
            cos = float(q[b] @ k[b, j] / (q[b].norm() * k[b, j].norm()))
            w.append((1 - math.acos(max(-1.0, min(1.0, cos))) / math.pi) ** 3 if mask[b, j] else 0.0)
        s = sum(w)
        out = sum(wj / s * k[b, j] for j, wj in enumerate(w)) if s else torch.zeros(8)
        want = out / out.norm() if s else out
        torch.testing.assert_close(got[b], want, rtol=1e-4, atol=1e-5)


def test_sdim_tends_to_the_collision_attention_as_signatures_grow():
    """SDIM's per-signature bucket sums estimate the collision-weighted sum: with many signatures
    its output points the same way (cosine -> 1); a different weighting (tau=1) does not."""
    torch.manual_seed(0)
    q = torch.randn(4, 16)
    k = torch.randn(4, 60, 16)
    k[:, :10] = q[:, None] + 0.3 * torch.randn(4, 10, 16)  # a few behaviours close to the target
    mask = torch.ones(4, 60, dtype=torch.bool)
    exact = CollisionTargetAttention(tau=3)(q, k, mask)
    sdim = SdimInterest(SdimConfig(dim=16, n_hashes=3 * 512, tau=3))(q, k, mask)
    assert torch.cosine_similarity(exact, sdim).min() > 0.999
    other = CollisionTargetAttention(tau=1)(q, k, mask)
    assert torch.cosine_similarity(other, sdim).min() < 0.99
