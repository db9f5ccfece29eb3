"""Metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest

from pipelines.training.metrics import auc, gauc, logloss, recall_ndcg_at_k


def _pairwise_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    assert auc(y, -s) == pytest.approx(1 - _pairwise_auc(y, s))
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_gauc_weights_groups_and_skips_single_class():
    g = np.array([1, 1, 1, 2, 2, 3])
    y = np.array([1, 0, 0, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.5])
    assert gauc(g, y, s) == pytest.approx((1.0 * 3 + 0.0 * 2) / 5)


def test_logloss():
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)


def test_recall_ndcg():
    scores = np.array([[0.9, 0.5, 0.1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    rec, nd = recall_ndcg_at_k(scores, np.array([0, 0, 1]), k=2)
    assert rec == pytest.approx(2 / 3)
    assert nd == pytest.approx((1.0 + 0 + 1 / np.log2(3)) / 3)


def test_recall_ndcg_break_ties_at_random_in_expectation():
    """A model that scores everything the same learned nothing: it gets the random recall k/N."""
    rec, nd = recall_ndcg_at_k(np.zeros((4, 10)), np.array([0, 3, 5, 9]), k=2)
    assert rec == pytest.approx(2 / 10) and nd == pytest.approx((1.0 + 1 / np.log2(3)) / 10)
    # one item above the target, the target tied with two others: rank 1, 2 or 3, each with p = 1/3
    rec, nd = recall_ndcg_at_k(np.array([[0.9, 0.5, 0.5, 0.5, 0.1]]), np.array([2]), k=3)
    assert rec == pytest.approx(2 / 3) and nd == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)
    # excluded (-inf) columns never tie with a real target
    rec, _ = recall_ndcg_at_k(np.array([[-np.inf, -np.inf, 0.0]]), np.array([2]), k=1)
    assert rec == 1.0


def test_retrieval_eval_excludes_seen_items_per_user_only():
    """Popularity returns one broadcast score row; excluding user A's seen items must not touch user B."""
    import torch

    from models.popularity import Popularity
    from pipelines.data.datasets import SequenceStore, Samples
    from pipelines.training.metrics import evaluate_retrieval

    store = SequenceStore(np.array([1, 2]), np.array([1, 3]), np.array([10, 10]), n_users=3)  # user 1 saw item 1
    samples = Samples(store, np.array([1, 2]), np.array([2, 1]), np.array([20, 20]), store.end_before(np.array([1, 2]), np.array([20, 20])), 4)
    model = Popularity.from_counts(np.array([0, 5, 4, 3, 0], dtype=float))  # item 1 most popular
    out = evaluate_retrieval(model, samples, np.array([1, 2, 3]), ks=(1,))
    assert out["recall_at_1"] == 1.0  # user 1: item 1 excluded -> item 2 first; user 2: item 1 first
    torch.set_num_threads(1)
