"""Helpers of the cascade training (pipelines/training/cascade.py): metrics over a candidate
set count a positive the set lost as a miss; the ranker's positions are each user's last ones."""

import numpy as np
import pytest

from pipelines.training.cascade import CascadeConfig, last_positions, set_metrics, top_by
from pipelines.data.datasets import Samples, SequenceStore


def test_set_metrics_counts_a_lost_positive_as_a_miss():
    cands = np.array([[5, 6, 7], [8, 9, 10]])
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    rec, nd = set_metrics(scores, cands, np.array([6, 99]), k=1)  # row 0: hit at rank 0; row 1: not in the set
    assert rec == pytest.approx(0.5) and nd == pytest.approx(0.5)
    rec, nd = set_metrics(scores, cands, np.array([7, 8]), k=2)  # both at rank 1 / rank 0
    assert rec == pytest.approx(1.0) and nd == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_top_by_keeps_the_best_first():
    cands = np.array([[5, 6, 7, 8]])
    assert top_by(np.array([[0.1, 0.9, 0.5, 0.7]]), cands, 2).tolist() == [[6, 8]]


def test_last_positions_per_user():
    users = np.array([1, 1, 1, 2, 2, 1])
    items = np.arange(1, 7)
    ts = np.array([0, 1, 2, 0, 1, 3]) * 1000
    store = SequenceStore(users, items, ts, 3)
    s = Samples(store, users, items, ts, store.own_rows(), 4)
    assert sorted(last_positions(s, 2).tolist()) == [2, 3, 4, 5]  # user 1: its 2 latest (rows 2, 5); user 2: both


def test_config_cross_checks_carry_values():
    with pytest.raises(ValueError, match=r"coarse_top_n \(300\) must be <= retrieval_top_n \(200\)"):
        CascadeConfig(retrieval_top_n=200, coarse_top_n=300)
