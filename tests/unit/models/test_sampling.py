"""logQ correction: the streaming frequency estimate and the corrected in-batch softmax."""

import numpy as np
import torch
import torch.nn.functional as F

from models.sampling import StreamingFrequencyEstimator, in_batch_softmax_loss

torch.set_num_threads(1)


def test_streaming_estimator_recovers_per_step_probability():
    rng = np.random.default_rng(0)
    p_true = np.array([0.9, 0.5, 0.2, 0.05])  # probability that item i appears in a step
    est = StreamingFrequencyEstimator(n_buckets=8, alpha=0.02)
    for _ in range(4000):
        est.update(torch.tensor(np.flatnonzero(rng.random(4) < p_true)))
    got = est.probability(torch.arange(4)).numpy()
    np.testing.assert_allclose(got, p_true, rtol=0.25)
    assert got[0] > got[1] > got[2] > got[3]


def test_logq_subtracts_log_probability_per_column():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    items = torch.tensor([3, 1, 2, 0])
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.01, 0.2]))
    got = in_batch_softmax_loss(logits, items, log_q)
    want = F.cross_entropy(logits - log_q[None, :], torch.arange(4))
    torch.testing.assert_close(got, want)
    assert not torch.isclose(got, in_batch_softmax_loss(logits, items, None))


def test_logq_makes_popular_negatives_cheaper():
    """Same scores, one column item is very popular: with logQ its negative pressure drops."""
    logits = torch.zeros(3, 3, requires_grad=True)
    items = torch.tensor([0, 1, 2])
    log_q = torch.log(torch.tensor([0.9, 0.01, 0.01]))
    in_batch_softmax_loss(logits, items, log_q).backward()
    g_pop_as_negative = logits.grad[1, 0].item()  # push-down on the popular item in row 1
    g_rare_as_negative = logits.grad[0, 1].item()
    assert 0 < g_pop_as_negative < g_rare_as_negative


def test_accidental_hits_are_masked():
    logits = torch.tensor([[1.0, 5.0], [5.0, 1.0]])
    items = torch.tensor([7, 7])  # both rows have the same positive item
    loss = in_batch_softmax_loss(logits, items)
    torch.testing.assert_close(loss, torch.tensor(0.0))
