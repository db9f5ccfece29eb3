"""Dataset builders: features as of the sample's time (no leakage), time splits, planted interests."""

import numpy as np
import pandas as pd
import pytest

from pipelines.data.datasets import SequenceStore, build_ml100k_ctr, build_ml100k_retrieval, build_synthetic_ctr
from pipelines.data.movielens import Ml100k
from pipelines.data.synthetic import SyntheticConfig, generate_world

CFG = SyntheticConfig(n_users=60, n_items=80, n_categories=10, n_interests=2, n_short_interests=2, seq_len=120,
                      short_len=50, n_impressions=6, seed=11)


def _assert_no_leakage(samples):
    """Every history item precedes the sample's time; the behaviour right after it does not."""
    store = samples.store
    for k in range(len(samples)):
        u, end = samples.user[k], samples.end[k]
        lo = store.user_ptr[u]
        assert (store.ts_ms[lo:end] < samples.ts_ms[k]).all()
        if end < store.user_ptr[u + 1]:
            assert store.ts_ms[end] >= samples.ts_ms[k]  # the history is also complete up to that time
        hist = samples.batch(np.array([k]))["hist"][0].numpy()
        real = hist[hist > 0]
        np.testing.assert_array_equal(real, store.items[max(lo, end - samples.hist_len) : end])


def test_sequence_store_end_is_strictly_before():
    store = SequenceStore(np.array([1, 1, 1, 2]), np.array([5, 6, 7, 8]), np.array([10, 20, 20, 5]), n_users=3)
    ends = store.end_before(np.array([1, 1, 1, 2, 2]), np.array([5, 20, 21, 5, 6]))
    np.testing.assert_array_equal(ends, [0, 1, 3, 3, 4])  # ts 20: the two events at 20 are not history
    np.testing.assert_array_equal(store.gather(np.array([1]), np.array([3]), 4), [[0, 5, 6, 7]])


def test_synthetic_ctr_no_leakage_and_time_split():
    s = build_synthetic_ctr(CFG, behaviour_types=(0, 2))  # views and clicks: clicks must not leak into their own sample
    for part in (s.train, s.valid, s.test):
        _assert_no_leakage(part)
    assert s.train.ts_ms.max() < s.valid.ts_ms.min() <= s.valid.ts_ms.max() < s.test.ts_ms.min()
    assert len(s.test) == 2 * CFG.n_users and len(s.valid) == CFG.n_users
    # an impression's own click is never in its history; a clicked item shows up for later impressions
    world = generate_world(CFG)
    clicks = world.frame[world.frame["type"] == 2]
    assert len(clicks) > 0
    labels = np.concatenate([s.train.label, s.valid.label, s.test.label])
    assert labels.sum() == len(clicks)


def test_synthetic_long_term_interests_invisible_in_last_50():
    s = build_synthetic_ctr(CFG)
    world = generate_world(CFG)
    hist = s.test.batch(np.arange(len(s.test)))["hist"].numpy()  # (N, seq_len)
    cat = np.where(hist > 0, world.item_category[np.clip(hist - 1, 0, None)], -1)
    long_c = world.long_interests[s.test.user - 1]  # (N, K)
    in_long = (cat[:, :, None] == long_c[:, None, :]).any(-1)
    assert not in_long[:, -CFG.short_len :].any()  # never in the recent window
    assert in_long[:, : -CFG.short_len].mean() > 0.5  # but dominant in the long history


def test_synthetic_clicks_follow_planted_interests():
    world = generate_world(SyntheticConfig(n_users=400, n_items=200, n_categories=20, seq_len=60, n_impressions=6, seed=5))
    assert world.click_prob.min() < 0.2 < 0.6 < world.click_prob.max()


def _fake_ml100k():
    rows = []
    for u in (1, 2):
        for k in range(6):
            rows.append((str(u), str(10 + k + u), 4.0, 1_000_000 + 1000 * k + u))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts_ms"]).sort_values("ts_ms", kind="stable")
    items = pd.DataFrame({"item_id": [str(i) for i in range(10, 20)], "title": "t", "year": "1990",
                          "genres": ["Drama Comedy", "Action"] * 5})
    users = pd.DataFrame({"user_id": ["1", "2"], "age": [20, 30], "gender": "M", "occupation": "x", "zip_code": "0"})
    return Ml100k(inter.reset_index(drop=True), items, users)


def test_ml100k_leave_last_out_without_leakage():
    s = build_ml100k_retrieval(hist_len=10, data=_fake_ml100k())
    assert len(s.test) == 2 and len(s.valid) == 2 and len(s.train) == 8
    items = s.vocabs["item"]
    assert sorted(s.test.item.tolist()) == sorted(items.encode(["16", "17"]).tolist())  # each user's last item
    for part in (s.train, s.valid, s.test):
        _assert_no_leakage(part)
    assert (s.valid.ts_ms < s.test.ts_ms).all()
    # the test history holds the five earlier items of that user, nothing else
    h = s.test.batch(np.arange(2))["hist"].numpy()
    assert ((h > 0).sum(1) == 5).all()
    assert s.item_cat[items.index("10")] == s.vocabs["item_cat"].index("Drama")


def test_ml100k_ctr_negatives_are_unseen():
    s = build_ml100k_ctr(hist_len=10, data=_fake_ml100k())
    assert s.train.label.mean() == pytest.approx(0.5)
    neg = s.train.label == 0
    for k in np.flatnonzero(neg):
        assert s.train.item[k] not in s.train.store.history(s.train.user[k], s.train.end[k])
