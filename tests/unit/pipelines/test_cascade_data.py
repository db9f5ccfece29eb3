"""Candidate sets mined from the stage above (pipelines/training/cascade_data.py): the sets hold the
stage above's candidates, never the positive as a negative, and out-of-fold mining never scores a
position with a model trained on it (or on its user)."""

import numpy as np
import pytest

from pipelines.data.datasets import Samples, SequenceStore
from pipelines.training.cascade_data import (
    build_candidate_sets,
    mine_out_of_fold,
    top_n_masked,
    user_folds,
)

N_ITEMS = 40
CATALOGUE = np.arange(1, N_ITEMS + 1)


def _samples(n_users: int = 12, per_user: int = 6, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    items = np.concatenate([rng.choice(CATALOGUE, per_user, replace=False) for _ in range(n_users)])
    ts = np.tile(np.arange(per_user), n_users) * 1000
    store = SequenceStore(users, items, ts, n_users + 1)
    return Samples(store, users, items, ts, store.own_rows(), hist_len=8)


def _fixed_scorer(table: np.ndarray):
    """Scores of row k = table[user of k]: a 'model' whose top-N we know."""
    return lambda samples, idx: table[samples.user[idx]][:, CATALOGUE]


def test_top_n_masks_history_but_keeps_the_positive():
    s = _samples()
    table = np.tile(np.arange(N_ITEMS + 1, dtype=np.float32)[::-1], (13, 1))  # item 1 best ... item 40 worst
    top = top_n_masked(_fixed_scorer(table), s, CATALOGUE, 10)
    for k in range(len(s)):
        hist = set(s.store.history(s.user[k], s.end[k]).tolist())
        assert not hist & set(top[k].tolist())
        expected = [i for i in CATALOGUE if i not in hist][:10]  # best first, history removed
        assert top[k].tolist() == expected


def test_sets_hold_the_stage_above_candidates_and_never_the_positive_as_negative():
    s = _samples()
    rng = np.random.default_rng(1)
    mined = np.stack([rng.choice(CATALOGUE, 15, replace=False) for _ in range(len(s))]).astype(np.int32)
    mined[::3, 4] = s.item[::3]  # the positive is among the mined candidates of every third row
    sets = build_candidate_sets(s, mined, n_hard=6, n_random=3, catalogue=CATALOGUE, seed=0, hard_pool=10)
    assert sets.cands.shape == (len(s), 10)
    assert (sets.cands[:, 0] == s.item).all()
    for k in range(len(s)):
        row = sets.cands[k]
        assert s.item[k] not in row[1:]  # the positive is never a negative
        assert len(set(row.tolist())) == len(row)  # no duplicates
        pool = set(mined[k, :10].tolist()) - {s.item[k]}
        assert set(row[1:7].tolist()) <= pool  # hard negatives: the stage above's top-10, positive removed
    batch = sets.batch(np.arange(4))
    assert tuple(batch["cands"].shape) == (4, 10) and (batch["cands"][:, 0] == batch["item"]).all()


def test_hard_negatives_are_a_fresh_draw_of_the_pool():
    s = _samples()
    mined = np.tile(CATALOGUE[:20], (len(s), 1)).astype(np.int32)
    sets = build_candidate_sets(s, mined, n_hard=5, n_random=0, catalogue=CATALOGUE, seed=0)
    drawn = set(sets.cands[:, 1:].ravel().tolist())
    assert len(drawn) > 10  # not always the top-5: a uniform draw from the pool


def test_out_of_fold_mining_never_uses_a_model_that_saw_the_position_or_its_user():
    s = _samples(n_users=20)
    calls: list[tuple[set, set]] = []  # (trained users, scored users) per fold model

    def train_fold(train_idx: np.ndarray):
        trained = set(s.user[train_idx].tolist())
        entry = (trained, set())
        calls.append(entry)

        def score(samples, idx):
            entry[1].update(samples.user[idx].tolist())
            return np.random.default_rng(0).random((len(idx), len(CATALOGUE)))

        return score

    mined = mine_out_of_fold(s, CATALOGUE, train_fold, top_n=5, n_folds=3, seed=0)
    assert len(calls) == 3
    for trained, scored in calls:
        assert scored and not trained & scored
    for f, idx in mined.trained_on.items():
        assert not (mined.fold[idx] == f).any()  # trained only on the other folds
    assert mined.top.shape == (len(s), 5)


def test_user_folds_keep_a_user_in_one_fold_and_need_two():
    users = np.repeat(np.arange(30), 4)
    f = user_folds(users, 3, seed=0)
    assert all(len(set(f[users == u])) == 1 for u in range(30))
    assert set(f.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"n_folds \(1\)"):
        user_folds(users, 1, seed=0)
