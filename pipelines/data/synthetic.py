"""Synthetic users with planted long-term interests that are invisible in their last 50 behaviours.

The world: `n_items` items, each in one of `n_categories` categories. Every user has
`n_interests` long-term categories and `n_short_interests` short-term ones (disjoint). Their
`seq_len` views are, in time order:

- the first `seq_len - short_len`: a long-term category with probability 1 - noise_rate, else any
  category;
- the last `short_len`: a short-term category with probability 1 - noise_rate, else a category
  that is NOT a long-term one -- so the long-term interests never appear in the recent window.

After the history come `n_impressions` impressions, one candidate each, drawn a third from the
user's long-term categories, a third from the short-term ones and a third from the rest. The
click probability is sigmoid(click_bias + long_weight [cat in long] + short_weight [cat in short]),
so a model that only sees the last 50 behaviours cannot tell a long-term candidate from a random
one, while SDIM or full attention over the whole sequence can. `SyntheticWorld.click_prob` keeps
the true probability of every impression (the oracle AUC is the ceiling any model can reach).

Everything is vectorised numpy and seeded: the same config gives the same events, ids included.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
import pandas as pd

from recstream.events import Event, EventType

# Event type codes in the integer frame (kept small for 10M-row frames).
VIEW, IMPRESSION, CLICK = 0, 1, 2
TYPE_NAMES = {VIEW: EventType.view, IMPRESSION: EventType.impression, CLICK: EventType.click}


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 8000
    n_items: int = 1000  # ~40 training impressions per item at the bench size: id embeddings do not just memorise
    n_categories: int = 50
    n_interests: int = 3  # long-term categories per user
    n_short_interests: int = 2
    seq_len: int = 1000  # views per user before the impressions
    short_len: int = 50  # the recent window that never shows a long-term category
    noise_rate: float = 0.2
    n_impressions: int = 8  # per user, after the history
    click_bias: float = -2.0
    long_weight: float = 3.0
    short_weight: float = 2.5
    seed: int = 7
    start_ts_ms: int = 1_700_000_000_000  # 2023-11-14
    view_gap_ms: int = 60_000
    impression_gap_ms: int = 3_600_000  # one impression round per hour, users interleaved within it

    def __post_init__(self) -> None:
        if self.n_interests + self.n_short_interests >= self.n_categories:
            raise ValueError(
                f"n_interests ({self.n_interests}) + n_short_interests ({self.n_short_interests}) "
                f"must be < n_categories ({self.n_categories})"
            )
        if self.n_items < self.n_categories:
            raise ValueError(f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories})")
        if not 0 < self.short_len <= self.seq_len:
            raise ValueError(f"short_len ({self.short_len}) must be in (0, seq_len ({self.seq_len})]")
        if not 0.0 <= self.noise_rate < 1.0:
            raise ValueError(f"noise_rate ({self.noise_rate}) must be in [0, 1)")
        if self.n_users < 1 or self.n_impressions < 1:
            raise ValueError(f"n_users ({self.n_users}) and n_impressions ({self.n_impressions}) must be >= 1")


@dataclass(frozen=True)
class SyntheticWorld:
    """The generated data and its ground truth (user, item and category ids are 0-based ints).

    frame: one row per event, time-ordered: user, item, type (VIEW/IMPRESSION/CLICK), ts_ms,
        request (impression number, -1 for views).
    """

    config: SyntheticConfig
    frame: pd.DataFrame
    item_category: np.ndarray  # (n_items,)
    long_interests: np.ndarray  # (n_users, n_interests) category ids
    short_interests: np.ndarray  # (n_users, n_short_interests)
    click_prob: np.ndarray  # (n_users * n_impressions,) true P(click) by request number

    def user_id(self, u: int) -> str:
        return f"u{u}"

    def item_id(self, i: int) -> str:
        return f"i{i}"


def _pick_items(rng: np.random.Generator, cats: np.ndarray, by_cat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One uniformly random item of each category in `cats`."""
    return by_cat[cats, (rng.random(cats.shape) * counts[cats]).astype(np.int64)]


@lru_cache(maxsize=4)
def generate_world(cfg: SyntheticConfig) -> SyntheticWorld:
    """Build the whole synthetic world (cached: the same config is generated once per process)."""
    rng = np.random.default_rng(cfg.seed)
    n_cat, U = cfg.n_categories, cfg.n_users
    item_category = rng.permutation(np.arange(cfg.n_items) % n_cat)  # every category has items
    counts = np.bincount(item_category, minlength=n_cat)
    by_cat = np.zeros((n_cat, counts.max()), dtype=np.int64)
    for c in range(n_cat):
        by_cat[c, : counts[c]] = np.flatnonzero(item_category == c)

    # Per-user category ranking: the first K are long-term, the next K_s short-term, the rest "other".
    ranking = np.argsort(rng.random((U, n_cat)), axis=1)
    K, Ks = cfg.n_interests, cfg.n_short_interests
    long_c, short_c = ranking[:, :K], ranking[:, K : K + Ks]

    n_old = cfg.seq_len - cfg.short_len
    old_cat = np.take_along_axis(long_c, rng.integers(0, K, (U, n_old)), axis=1)
    old_cat = np.where(rng.random((U, n_old)) < cfg.noise_rate, rng.integers(0, n_cat, (U, n_old)), old_cat)
    new_cat = np.take_along_axis(short_c, rng.integers(0, Ks, (U, cfg.short_len)), axis=1)
    not_long = np.take_along_axis(ranking, rng.integers(K, n_cat, (U, cfg.short_len)), axis=1)
    new_cat = np.where(rng.random((U, cfg.short_len)) < cfg.noise_rate, not_long, new_cat)
    view_items = _pick_items(rng, np.concatenate([old_cat, new_cat], axis=1), by_cat, counts)  # (U, seq_len)

    users = np.arange(U)
    jitter = users * 997 % cfg.view_gap_ms  # users do not act in lockstep
    view_ts = cfg.start_ts_ms + jitter[:, None] + np.arange(cfg.seq_len)[None, :] * cfg.view_gap_ms  # (U, seq_len)

    # Impressions: round r for every user inside hour r after everyone's history.
    kind = rng.integers(0, 3, (U, cfg.n_impressions))  # 0 long, 1 short, 2 other
    imp_cat = np.select(
        [kind == 0, kind == 1],
        [np.take_along_axis(long_c, rng.integers(0, K, kind.shape), 1), np.take_along_axis(short_c, rng.integers(0, Ks, kind.shape), 1)],
        np.take_along_axis(ranking, rng.integers(K + Ks, n_cat, kind.shape), 1),
    )
    imp_items = _pick_items(rng, imp_cat, by_cat, counts)  # (U, n_imp)
    in_long = (imp_cat[:, :, None] == long_c[:, None, :]).any(-1)
    in_short = (imp_cat[:, :, None] == short_c[:, None, :]).any(-1)
    logit = cfg.click_bias + cfg.long_weight * in_long + cfg.short_weight * in_short
    prob = 1.0 / (1.0 + np.exp(-logit))
    clicked = rng.random(prob.shape) < prob
    t0 = cfg.start_ts_ms + cfg.seq_len * cfg.view_gap_ms + cfg.impression_gap_ms
    slot = cfg.impression_gap_ms // (U + 1)
    imp_ts = t0 + np.arange(cfg.n_impressions)[None, :] * cfg.impression_gap_ms + users[:, None] * slot  # (U, n_imp)
    request = users[:, None] * cfg.n_impressions + np.arange(cfg.n_impressions)[None, :]

    parts = [
        (np.repeat(users, cfg.seq_len), view_items.ravel(), VIEW, view_ts.ravel(), np.full(U * cfg.seq_len, -1)),
        (np.repeat(users, cfg.n_impressions), imp_items.ravel(), IMPRESSION, imp_ts.ravel(), request.ravel()),
        (np.repeat(users, cfg.n_impressions)[clicked.ravel()], imp_items.ravel()[clicked.ravel()], CLICK,
         imp_ts.ravel()[clicked.ravel()] + 1000, request.ravel()[clicked.ravel()]),
    ]
    frame = pd.DataFrame({
        "user": np.concatenate([p[0] for p in parts]).astype(np.int32),
        "item": np.concatenate([p[1] for p in parts]).astype(np.int32),
        "type": np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts]),
        "ts_ms": np.concatenate([p[3] for p in parts]).astype(np.int64),
        "request": np.concatenate([p[4] for p in parts]).astype(np.int64),
    })
    frame = frame.sort_values(["ts_ms", "user", "type"], kind="stable").reset_index(drop=True)
    return SyntheticWorld(cfg, frame, item_category, long_c, short_c, prob.ravel())


def generate_events(cfg: SyntheticConfig) -> Iterator[Event]:
    """The synthetic world as time-ordered Events (views, impressions, clicks).

    Ids: users "u<n>", items "i<n>", requests "syn<seed>-r<n>"; event ids
    "syn<seed>-<user>-<type>-<ts>" are deterministic, so re-producing is idempotent downstream.
    The item's category is in `context["category"]`.
    """
    world = generate_world(cfg)
    f = world.frame
    for u, i, t, ts, r in zip(f["user"].to_numpy(), f["item"].to_numpy(), f["type"].to_numpy(),
                              f["ts_ms"].to_numpy(), f["request"].to_numpy()):
        etype = TYPE_NAMES[int(t)]
        yield Event(
            event_id=f"syn{cfg.seed}-{u}-{etype.value}-{ts}",
            user_id=f"u{u}",
            item_id=f"i{i}",
            type=etype,
            ts=int(ts),
            request_id=f"syn{cfg.seed}-r{r}" if r >= 0 else None,
            position=0 if r >= 0 else None,
            context={"category": f"c{world.item_category[i]}"},
        )
