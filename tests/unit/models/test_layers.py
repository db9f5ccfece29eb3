"""Shared layers: target attention against a manual computation, masking, crossing."""

import math

import torch

from models.layers import CrossNetV2, DinAttention, DotTargetAttention, HashedEmbedding, masked_mean

torch.set_num_threads(1)


def test_dot_attention_matches_manual_softmax_and_ignores_padding():
    torch.manual_seed(0)
    q, k = torch.randn(2, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    att = DotTargetAttention(8, null_key=False)
    got = att(q, k, mask)
    for b in range(2):
        kk = k[b, mask[b]]
        w = torch.softmax(kk @ q[b] / math.sqrt(8), 0)
        torch.testing.assert_close(got[b], w @ kk)


def test_null_key_lets_attention_say_nothing_matches():
    q, k = torch.ones(1, 4), -torch.ones(1, 3, 4)  # every behaviour points away from the target
    att = DotTargetAttention(4, null_key=True, cosine=True)
    with torch.no_grad():
        att.log_scale.fill_(math.log(8.0))
    out = att(q, k, torch.ones(1, 3, dtype=torch.bool))
    assert out.norm() < 0.1 * k[0, 0].norm()  # plain softmax would return a full-norm average
    assert DotTargetAttention(4, null_key=False)(q, k, torch.ones(1, 3, dtype=torch.bool)).norm() > 1.9


def test_din_attention_masks_padding():
    torch.manual_seed(0)
    din = DinAttention(4)
    q, k = torch.randn(1, 4), torch.randn(1, 3, 4)
    junk = torch.cat([torch.randn(1, 2, 4) * 100, k], dim=1)
    mask = torch.tensor([[False, False, True, True, True]])
    torch.testing.assert_close(din(q, junk, mask), din(q, k, torch.ones(1, 3, dtype=torch.bool)))


def test_embedding_padding_and_masked_mean():
    emb = HashedEmbedding(10, 4)
    assert emb(torch.tensor([0])).abs().sum() == 0
    x = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    torch.testing.assert_close(masked_mean(x, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 2.0]]))


def test_cross_network_is_residual_of_x0_products():
    cross = CrossNetV2(3, n_layers=1)
    torch.nn.init.eye_(cross.layers[0].weight)
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(cross(x0), x0 * x0 + x0)


def test_din_folded_first_layer_equals_the_plain_forward():
    """forward_folded (serving: the first layer as one product per sequence, key part from a table)
    against forward on the broadcast batch, with padding and with an all-padding history."""
    torch.manual_seed(0)
    din = DinAttention(8, hidden=(6, 4)).eval()
    q, k = torch.randn(5, 8), torch.randn(7, 8)
    for mask in (torch.tensor([False, False, True, True, True, True, True]), torch.zeros(7, dtype=torch.bool)):
        want = din(q, k.expand(5, -1, -1), mask.expand(5, -1))
        with torch.inference_mode():
            got = din.forward_folded(q, k, din.key_part(k), mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():  # no behaviours at all (serving drops the padding before the call)
        empty = din.forward_folded(q, k[:0], din.key_part(k[:0]), torch.zeros(0, dtype=torch.bool))
    torch.testing.assert_close(empty, torch.zeros(5, 8))
