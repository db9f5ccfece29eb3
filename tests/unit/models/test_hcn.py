"""HCN: interest-centre update shapes per level, convergence of the refinement, cheap scoring."""

import torch
from torch import nn

from models.hcn import HCN, HcnConfig, HierarchicalInterestExtractor, diversity_loss

torch.set_num_threads(1)


def test_level_shapes_coarse_to_fine():
    torch.manual_seed(0)
    ext = HierarchicalInterestExtractor(dim=8, levels=(2, 4, 8), n_iters=2)
    x, mask = torch.randn(3, 11, 8), torch.ones(3, 11, dtype=torch.bool)
    mask[0, :6] = False
    assert ext(x, mask).shape == (3, 8, 8)
    c, shifts = ext.refine(torch.randn(3, 4, 8), ext.proj(x), mask, 5, nn.LayerNorm(8))
    assert c.shape == (3, 4, 8) and len(shifts) == 5


def test_padding_does_not_move_centres():
    torch.manual_seed(0)
    ext = HierarchicalInterestExtractor(dim=8, levels=(2, 4), n_iters=3)
    x = torch.randn(1, 5, 8)
    padded = torch.cat([torch.randn(1, 4, 8) * 10, x], dim=1)
    mask = torch.tensor([[False] * 4 + [True] * 5])
    torch.testing.assert_close(ext(padded, mask), ext(x, torch.ones(1, 5, dtype=torch.bool)))


def test_refinement_converges_on_clustered_behaviours():
    torch.manual_seed(0)
    d = 16
    means = torch.randn(3, d) * 3
    h = means[torch.randint(0, 3, (1, 300))] + 0.3 * torch.randn(1, 300, d)
    _, shifts = HierarchicalInterestExtractor.refine(torch.randn(1, 3, d), h, torch.ones(1, 300, dtype=torch.bool), 25, nn.LayerNorm(d))
    shifts = [s.item() for s in shifts]
    assert shifts[-1] < 1e-4 * shifts[0]  # geometric convergence to a fixed point
    assert all(b <= a + 1e-6 for a, b in zip(shifts[2:], shifts[3:]))


def test_diversity_loss_zero_iff_orthogonal():
    assert diversity_loss(torch.eye(4).unsqueeze(0)).item() < 1e-6
    assert diversity_loss(torch.ones(1, 4, 4)).item() > 0.5


def test_score_is_soft_max_over_interests_and_cheap():
    torch.manual_seed(0)
    model = HCN(HcnConfig(n_users=5, n_items=20, long_len=10, short_len=4, score_power=1e4))
    batch = {"user": torch.tensor([1, 2]), "hist": torch.randint(0, 20, (2, 10)), "item": torch.tensor([3, 4])}
    u, _ = model.interests(batch)
    assert u.shape == (2, 4 + 2, 64)
    v = model.item_vectors(torch.arange(1, 20))
    s = model.score(u, v)
    assert s.shape == (2, 19)
    torch.testing.assert_close(s, (torch.einsum("bkd,nd->bnk", u, v) / model.config.temperature).amax(-1), rtol=1e-3, atol=1e-3)


def test_refine_and_score_equal_their_formulas_written_per_user():
    # refine and score run in a (B, K, N) layout for speed; this is the (N, K) formula of the docstring
    torch.manual_seed(0)
    d, norm = 8, nn.LayerNorm(8)
    h, centres = torch.randn(3, 7, d), torch.randn(3, 4, d)
    mask = torch.rand(3, 7) > 0.3
    got, _ = HierarchicalInterestExtractor.refine(centres, h, mask, 2, norm)
    for b in range(3):
        c = centres[b]
        for _ in range(2):
            a = torch.softmax(h[b] @ c.T / d ** 0.5, dim=-1) * mask[b, :, None]  # (N, K)
            c = norm(c + (a / a.sum(0).clamp_min(1e-9)).T @ h[b])  # (K, d)
        torch.testing.assert_close(got[b], c)
    model = HCN(HcnConfig(n_users=5, n_items=20, long_len=10, short_len=4, score_power=0.7))
    u, v = torch.randn(2, 6, 64), torch.randn(9, 64)
    s = torch.einsum("bkd,nd->bnk", u, v) / model.config.temperature  # (B, N, K)
    torch.testing.assert_close(model.score(u, v), (torch.softmax(0.7 * s, -1) * s).sum(-1))
