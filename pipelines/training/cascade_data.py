"""Training data from the cascade itself: each later stage learns on what the stage above hands it.

For a training position (user u, the held-out next item y, the history before it) serving would
show the later stage the top-N candidates of the stage above, the user's history excluded. So:

1. `mine_out_of_fold`: the training positions are split into folds BY USER (`user_folds`); for
   fold f a model is trained on the positions of the other folds only, and mines the top-N of the
   positions of fold f. No position is ever mined by a model that trained on it, nor on any other
   position of the same user (its later targets would otherwise leak into its candidates).
2. `build_candidate_sets`: per position a fixed-width set, column 0 the positive y, then hard
   negatives drawn without replacement from the mined top-N (y removed: the positive is never a
   negative), then random negatives from the catalogue (never y, never a hard negative of the
   row). The model's loss adds in-batch negatives where it has them (HCN).

The sets are `CandidateSamples`: the ordinary `Samples` (same SequenceStore, same point-in-time
history) plus `cands` (n, C), emitted by `batch()` as "cands" (B, C) long. The same builder makes
the sets of HCN (from the two-tower's candidates) and of the ranker (from the stage above it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from pipelines.data.datasets import Samples

log = logging.getLogger(__name__)

# (positions' Samples, their indices) -> (len(idx), n_catalogue) scores of the catalogue columns
ScoreFn = Callable[[Samples, np.ndarray], np.ndarray]


def user_folds(users: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """(n,) fold of each position: a seeded random fold per distinct user (all of a user's
    positions share it)."""
    if n_folds < 2:
        raise ValueError(f"n_folds ({n_folds}) must be >= 2 for out-of-fold mining")
    uniq = np.unique(users)
    fold_of_user = np.random.default_rng(seed).permutation(len(uniq)) % n_folds
    return fold_of_user[np.searchsorted(uniq, users)]


def top_n_masked(score: ScoreFn, samples: Samples, catalogue: np.ndarray, top_n: int,
                 idx: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
    """(len(idx), top_n) int32 item rows: each position's top-N over `catalogue` with its history
    (everything before it in the SequenceStore) excluded, as serving filters seen items. The
    position's own item is NOT excluded: it is in the set when the stage above would keep it."""
    idx = np.arange(len(samples)) if idx is None else np.asarray(idx)
    if top_n > len(catalogue):
        raise ValueError(f"top_n ({top_n}) must be <= the catalogue size ({len(catalogue)})")
    col_of = np.full(int(catalogue.max()) + 1, -1, dtype=np.int64)
    col_of[catalogue] = np.arange(len(catalogue))
    out = np.empty((len(idx), top_n), dtype=np.int32)
    for start in range(0, len(idx), batch_size):
        part = idx[start : start + batch_size]
        s = np.array(score(samples, part), dtype=np.float32, copy=True)  # (b, N)
        for r, k in enumerate(part):
            seen = col_of[samples.store.history(samples.user[k], samples.end[k])]
            seen = seen[(seen >= 0) & (seen != col_of[samples.item[k]])]
            s[r, seen] = -np.inf
        top = np.argpartition(-s, top_n - 1, axis=1)[:, :top_n]  # (b, top_n) unordered
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        out[start : start + len(part)] = catalogue[np.take_along_axis(top, order, 1)]
    return out


@dataclass
class MinedCandidates:
    """The stage above's top-N per position, mined out of fold.

    top: (n, top_n) int32 item rows, best first; fold: (n,) fold of each position;
    trained_on: fold -> the position indices its mining model was trained on (for audits/tests).
    """

    top: np.ndarray
    fold: np.ndarray
    trained_on: dict[int, np.ndarray] = field(default_factory=dict)


def mine_out_of_fold(samples: Samples, catalogue: np.ndarray, train_fold: Callable[[np.ndarray], ScoreFn],
                     top_n: int, n_folds: int = 2, seed: int = 0) -> MinedCandidates:
    """Top-N candidates of every position by a model that never saw the position's user.

    Args:
        train_fold: training position indices -> a scorer trained on exactly those positions.
        top_n: candidates kept per position (the stage above's cut: 1,000 for retrieval, 200 for coarse).
    """
    fold = user_folds(samples.user, n_folds, seed)
    top = np.zeros((len(samples), top_n), dtype=np.int32)
    trained_on: dict[int, np.ndarray] = {}
    for f in range(n_folds):
        train_idx, mine_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if np.intersect1d(samples.user[train_idx], samples.user[mine_idx]).size:  # the invariant, checked
            raise AssertionError(f"fold {f}: a mined user is also a training user")
        log.info("out-of-fold mining, fold %d/%d: train on %d positions, mine %d", f + 1, n_folds, len(train_idx), len(mine_idx))
        scorer = train_fold(train_idx)
        trained_on[f] = train_idx
        top[mine_idx] = top_n_masked(scorer, samples, catalogue, top_n, mine_idx)
    return MinedCandidates(top, fold, trained_on)


@dataclass
class CandidateSamples(Samples):
    """Samples with a candidate set per position: cands (n, C) int64, column 0 = the positive."""

    cands: np.ndarray | None = None
    # (n, C) float32 a teacher's logits of the same candidates (HCN distilled from the ranker's
    # order), emitted as "cand_teacher"; None = no distillation
    teacher: np.ndarray | None = None

    def subset(self, idx: np.ndarray) -> "CandidateSamples":
        out = super().subset(idx)
        return replace(out, cands=None if self.cands is None else self.cands[idx],
                       teacher=None if self.teacher is None else self.teacher[idx])

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = super().batch(idx)
        if self.cands is not None:
            out["cands"] = torch.from_numpy(np.ascontiguousarray(self.cands[idx], dtype=np.int64))  # (B, C)
        if self.teacher is not None:
            out["cand_teacher"] = torch.from_numpy(np.ascontiguousarray(self.teacher[idx], dtype=np.float32))  # (B, C)
        return out


def build_candidate_sets(samples: Samples, mined_top: np.ndarray, n_hard: int, n_random: int,
                         catalogue: np.ndarray, seed: int, hard_pool: int | None = None) -> CandidateSamples:
    """Column 0 the position's item, then `n_hard` negatives drawn without replacement from the
    first `hard_pool` (default all) of its mined candidates, the positive removed, then `n_random`
    uniform catalogue items that are neither the positive nor one of the row's hard negatives.

    A row with fewer than n_hard mined negatives (tiny catalogues) fills the gap with random ones.
    """
    rng = np.random.default_rng(seed)
    pool = mined_top[:, : hard_pool or mined_top.shape[1]].astype(np.int64)  # (n, P)
    n, width = len(samples), 1 + n_hard + n_random
    cands = np.zeros((n, width), dtype=np.int64)
    cands[:, 0] = samples.item
    # a random key per pool entry, the positive pushed last: the n_hard smallest keys are a uniform
    # draw without replacement from the pool minus the positive
    keys = rng.random(pool.shape)
    is_pos = pool == samples.item[:, None]
    keys[is_pos] = np.inf
    n_neg_avail = pool.shape[1] - is_pos.sum(1)  # (n,)
    take = min(n_hard, pool.shape[1])
    pick = np.argsort(keys, axis=1, kind="stable")[:, :take]  # (n, take)
    cands[:, 1 : 1 + take] = np.take_along_axis(pool, pick, 1)
    short = np.arange(take)[None, :] >= n_neg_avail[:, None]  # (n, take): slots the pool could not fill
    cands[:, 1 : 1 + take][short] = 0
    cands[:, 1 + take : 1 + n_hard] = 0
    # random negatives (and the unfilled hard slots): resample until no duplicate of the row
    empty = cands == 0
    empty[:, 0] = False
    cands[empty] = rng.choice(catalogue, int(empty.sum()))
    for _ in range(100):
        bad = _duplicate_mask(cands) & empty
        if not bad.any():
            break
        cands[bad] = rng.choice(catalogue, int(bad.sum()))
    else:  # pragma: no cover - only a catalogue smaller than the set width gets here
        raise ValueError(f"could not draw {width} distinct items per row from a catalogue of {len(catalogue)}")
    return CandidateSamples(samples.store, samples.user, samples.item, samples.ts_ms, samples.end, samples.hist_len,
                            label=samples.label, user_feats=samples.user_feats, item_feats=samples.item_feats, cands=cands)


def _duplicate_mask(cands: np.ndarray) -> np.ndarray:
    """(n, C) True where the entry repeats an earlier entry of its row."""
    order = np.argsort(cands, axis=1, kind="stable")
    s = np.take_along_axis(cands, order, 1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, 1)
    return out
