"""Dataset builders: samples whose features are taken as of the sample's own time (no leakage).

Every sample (a retrieval target or a CTR impression) carries a user row, an item row, its time
and a pointer `end` into a `SequenceStore` of that user's behaviours; its history is
`store[user_start : end]`, where `end` is the first behaviour at or after the sample's time. So a
sample never sees a behaviour from its own instant or later, whatever order samples are batched in.

The ML-100k builders follow an evaluation protocol (`pipelines.data.movielens.PROTOCOLS`; default
"standard"): under "standard" a sample's `end` is its own row instead, so its history is every
earlier interaction in the protocol's order, same-instant ones included (ties in file order).

Builders:
- `build_ml100k_retrieval`: MovieLens-100k, per user time-ordered; the last interaction is the
  test target, the one before it the validation target, the rest train (leave-last-out).
- `build_ml100k_ctr`: the same split as CTR samples: every rating is an exposure, labelled 1 when
  the rating is >= 4 (0 below), plus one random item the user had not rated before as an unexposed
  negative (label 0) per rating.
- `ml100k_test_cases`: per user, the training history (train + valid, time order) and the held-out
  test item, for comparing a live service with the offline evaluation;
  `with_streamed_test_history` gives the test samples with that same history (same-instant
  interactions included: under "strict_time" the offline samples leave them out, under
  "standard" they already hold them).

Samples may carry dense stream features (`user_feats`, `item_feats`, from the Feast offline store:
`pipelines/data/stream_features.py`), which `batch()` emits under the same keys.
- `build_synthetic_ctr`: impressions of the synthetic world labelled by later clicks, split by
  global time (last impression round = test, the one before = validation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from models.layers import Vocab
from pipelines.data.movielens import DEFAULT_PROTOCOL, get_protocol, leave_last_out, order_interactions
from pipelines.data.synthetic import CLICK, IMPRESSION, VIEW, SyntheticConfig, generate_world

log = logging.getLogger(__name__)


class SequenceStore:
    """Behaviour sequences of all users in CSR form, sorted by (user row, ts).

    Args:
        users, items, ts_ms: (n,) one row per behaviour; users and items are embedding rows.
        n_users: number of user rows (Vocab.size).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, ts_ms: np.ndarray, n_users: int):
        order = np.lexsort((ts_ms, users))  # stable: same-instant behaviours keep their input order
        self._own_row = np.empty(len(order), dtype=np.int64)
        self._own_row[order] = np.arange(len(order))
        self.users = np.asarray(users, dtype=np.int64)[order]
        self.items = np.asarray(items, dtype=np.int64)[order]
        self.ts_ms = np.asarray(ts_ms, dtype=np.int64)[order]
        self.user_ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.add.at(self.user_ptr, self.users + 1, 1)
        self.user_ptr = np.cumsum(self.user_ptr)
        self._offset = int(self.ts_ms.min(initial=0)) - 1
        self._span = int(self.ts_ms.max(initial=0)) - self._offset + 2
        if n_users * self._span >= 2**62:
            raise ValueError(f"SequenceStore: n_users ({n_users}) x time span ({self._span} ms) overflows int64 keys")
        self._key = self.users * self._span + (self.ts_ms - self._offset)  # sorted

    def __len__(self) -> int:
        return len(self.items)

    def end_before(self, users: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Index one past the user's last behaviour strictly before ts_ms."""
        rel = np.clip(np.asarray(ts_ms, dtype=np.int64) - self._offset, 0, self._span - 1)
        return np.searchsorted(self._key, np.asarray(users, dtype=np.int64) * self._span + rel, side="left")

    def own_rows(self) -> np.ndarray:
        """(n,) the row of each behaviour as given to the constructor (in that input order). As a
        sample's `end` its history is every earlier behaviour of the user, same-instant ones that
        came before it in the input included (the standard ML-100k protocol's history)."""
        return self._own_row.copy()

    def gather(self, users: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """(B, length) the last `length` behaviours before each end, right-aligned, 0-padded."""
        idx = ends[:, None] - length + np.arange(length)[None, :]  # (B, length)
        valid = idx >= self.user_ptr[users][:, None]
        return np.where(valid, self.items[np.clip(idx, 0, None)], 0)

    def history(self, user: int, end: int) -> np.ndarray:
        return self.items[self.user_ptr[user] : end]


@dataclass
class Samples:
    """Training or evaluation samples over a shared SequenceStore.

    batches() yields dicts of tensors: user (B,), item (B,), hist (B, hist_len), [label (B,)],
    [user_feats (B, Fu), item_feats (B, Fi) float32: the stream's features as of the sample's time].
    """

    store: SequenceStore
    user: np.ndarray
    item: np.ndarray
    ts_ms: np.ndarray
    end: np.ndarray
    hist_len: int
    label: np.ndarray | None = None
    user_feats: np.ndarray | None = None  # (n, Fu) float32 (features.vectors.USER_VECTOR_NAMES)
    item_feats: np.ndarray | None = None  # (n, Fi) float32 (features.vectors.ITEM_VECTOR_NAMES)

    def __post_init__(self) -> None:
        for name in ("label", "user_feats", "item_feats"):
            x = getattr(self, name)
            if x is not None and len(x) != len(self.user):
                raise ValueError(f"Samples.{name} has {len(x)} rows for {len(self.user)} samples")

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, idx: np.ndarray) -> "Samples":
        def pick(x):
            return None if x is None else x[idx]

        return replace(self, user=self.user[idx], item=self.item[idx], ts_ms=self.ts_ms[idx], end=self.end[idx],
                       label=pick(self.label), user_feats=pick(self.user_feats), item_feats=pick(self.item_feats))

    def shard(self, rank: int, world_size: int) -> "Samples":
        """Every world_size-th sample starting at rank (data-parallel workers)."""
        return self.subset(np.arange(rank, len(self), world_size))

    def n_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = {
            "user": torch.from_numpy(self.user[idx]),
            "item": torch.from_numpy(self.item[idx]),
            "hist": torch.from_numpy(self.store.gather(self.user[idx], self.end[idx], self.hist_len)),
        }
        if self.label is not None:
            out["label"] = torch.from_numpy(self.label[idx].astype(np.float32))
        for name in ("user_feats", "item_feats"):
            x = getattr(self, name)
            if x is not None:
                out[name] = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))
        return out

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size])

    @property
    def window(self) -> dict[str, int]:
        return {"start_ts_ms": int(self.ts_ms.min(initial=0)), "end_ts_ms": int(self.ts_ms.max(initial=0)), "n_samples": len(self)}


@dataclass
class Splits:
    """train / valid / test samples plus what a model needs to be built and served."""

    task: str  # "retrieval" | "ranking"
    train: Samples
    valid: Samples
    test: Samples
    vocabs: dict[str, Vocab]
    item_cat: np.ndarray  # (n_item_rows,) category row of every item row
    catalogue: np.ndarray  # item rows a retrieval model ranks over (the known items)
    meta: dict = field(default_factory=dict)  # JSON-safe facts that go into the manifest
    extras: dict = field(default_factory=dict)  # ground truth for benchmarks (not serialised)
    # (n_item_rows, Fi) item features every catalogue item is scored with in retrieval evaluation
    # (as of the end of the streamed data, as a live service sees them); None without features
    catalogue_item_feats: np.ndarray | None = None

    @property
    def n_feats(self) -> dict[str, int]:
        """{"n_user_feats", "n_item_feats"}: the dense feature widths the samples carry (0 = none)."""
        t = self.train
        return {"n_user_feats": 0 if t.user_feats is None else t.user_feats.shape[1],
                "n_item_feats": 0 if t.item_feats is None else t.item_feats.shape[1]}

    def model_dims(self) -> dict[str, int]:
        return {"n_users": self.vocabs["user"].size, "n_items": self.vocabs["item"].size,
                "n_item_cats": self.vocabs["item_cat"].size}

    @property
    def data_window(self) -> dict:
        return {"train": self.train.window, "valid": self.valid.window, "test": self.test.window, **self.meta}


def _item_cat_rows(item_vocab: Vocab, cat_vocab: Vocab, cats_by_token: dict[str, str]) -> np.ndarray:
    out = np.zeros(item_vocab.size, dtype=np.int64)
    for i, tok in enumerate(item_vocab.tokens):
        if tok in cats_by_token:
            out[i + 1] = cat_vocab.index(cats_by_token[tok])
    return out


def _ml100k_parts(hist_len: int, data, protocol: str):
    """Shared by the ML-100k builders: vocabularies, the sequence store, per-split samples and ratings."""
    if data is None:
        from pipelines.data.movielens import load_ml100k

        data = load_ml100k()
    history = get_protocol(protocol).history
    inter = order_interactions(data.interactions, protocol)
    users = Vocab.build("user", sorted(data.users["user_id"], key=int))
    items = Vocab.build("item", sorted(data.items["item_id"], key=int))
    first_genre = {i: (g.split()[0] if g else "none") for i, g in zip(data.items["item_id"], data.items["genres"])}
    cats = Vocab.build("item_cat", sorted(set(first_genre.values())))
    u = users.encode(inter["user_id"])
    it = items.encode(inter["item_id"])
    ts = inter["ts_ms"].to_numpy(np.int64)
    rating = inter["rating"].to_numpy(np.float64)
    store = SequenceStore(u, it, ts, users.size)
    from_end = leave_last_out(inter)  # 0 = user's last interaction
    end = store.own_rows() if history == "position" else store.end_before(u, ts)
    parts = {}
    for name, mask in (("train", from_end >= 2), ("valid", from_end == 1), ("test", from_end == 0)):
        parts[name] = (Samples(store, u[mask], it[mask], ts[mask], end[mask], hist_len), rating[mask])
    vocabs = {"user": users, "item": items, "item_cat": cats}
    return parts, vocabs, _item_cat_rows(items, cats, first_genre), np.arange(1, len(items) + 1)


def build_ml100k_retrieval(hist_len: int = 200, data=None, protocol: str = DEFAULT_PROTOCOL) -> Splits:
    """MovieLens-100k leave-last-out: per user, last interaction = test, previous = valid, in the
    order of `protocol` (a name in pipelines.data.movielens.PROTOCOLS); retrieval evaluation masks
    each sample's history, so the protocol also fixes the mask."""
    parts, vocabs, item_cat, catalogue = _ml100k_parts(hist_len, data, protocol)
    return Splits("retrieval", parts["train"][0], parts["valid"][0], parts["test"][0], vocabs, item_cat,
                  catalogue=catalogue, meta={"dataset": "ml100k", "split": "leave-last-out", "protocol": protocol},
                  extras={"rating": {name: parts[name][1] for name in parts}})  # (n,) rating of each sample


def _with_negatives(s: Samples, n_items: int, seed: int, pos_label: np.ndarray | None = None) -> Samples:
    """Each sample (label `pos_label`, default 1) plus one random item the user had not
    interacted with before, label 0."""
    rng = np.random.default_rng(seed)
    neg = rng.integers(1, n_items + 1, len(s))
    for k in range(len(s)):  # resample the rare collisions with the user's history
        hist = s.store.history(s.user[k], s.end[k])
        while neg[k] == s.item[k] or neg[k] in hist:
            neg[k] = rng.integers(1, n_items + 1)
    pos = np.ones(len(s)) if pos_label is None else np.asarray(pos_label, dtype=np.float64)
    return Samples(s.store, np.concatenate([s.user, s.user]), np.concatenate([s.item, neg]),
                   np.concatenate([s.ts_ms, s.ts_ms]), np.concatenate([s.end, s.end]), s.hist_len,
                   label=np.concatenate([pos, np.zeros(len(s))]).astype(np.float32))


ML100K_LABELS = ("rating_ge_4", "interaction")


def build_ml100k_ctr(hist_len: int = 200, seed: int = 0, data=None, label: str = "rating_ge_4",
                     protocol: str = DEFAULT_PROTOCOL) -> Splits:
    """MovieLens-100k CTR samples on the leave-last-out split of `protocol`.

    Args:
        label: "rating_ge_4" (default): a rating is an exposure, positive when >= 4 (about 55% of
            ratings); "interaction": every rating is a positive (the unseen negatives only).
            Either way one random item the user had not rated before joins as a negative.
    """
    if label not in ML100K_LABELS:
        raise ValueError(f"label ({label!r}) must be one of {ML100K_LABELS}")
    parts, vocabs, item_cat, catalogue = _ml100k_parts(hist_len, data, protocol)
    n = len(vocabs["item"])

    def ctr(name: str, seed_offset: int) -> Samples:
        s, rating = parts[name]
        return _with_negatives(s, n, seed + seed_offset, (rating >= 4.0) if label == "rating_ge_4" else None)

    negatives = "1 random unseen item per rating, label 0"
    return Splits("ranking", ctr("train", 0), ctr("valid", 1), ctr("test", 2), vocabs, item_cat, catalogue=catalogue,
                  meta={"dataset": "ml100k", "split": "leave-last-out", "protocol": protocol, "negatives": negatives,
                        "label": "rating >= 4 (ratings below 4 and unseen items: 0)" if label == "rating_ge_4"
                        else "any rating (unseen items: 0)"})


def with_streamed_test_history(splits: Splits) -> Splits:
    """The leave-last-out test samples with the history a live service holds after the stream
    processed `ml100k_events(split="train_valid")`: all the user's other interactions, including
    those at the test event's own instant, which "strict_time" samples leave out (44% of ML-100k
    test users rated other items in the same second as their test item). Under the standard
    protocol the test samples already hold exactly this history (unchanged here). Compare a live
    service with `evaluate_retrieval` on these.

    Valid because each user's test interaction is its last row in the SequenceStore (time order,
    ties in load order, and the test one is the last in load order).
    """
    t = splits.test
    end = t.store.user_ptr[t.user + 1] - 1  # (n,) the test event's own row: everything before it
    if not (t.store.items[end] == t.item).all():
        raise ValueError("test samples are not each user's last interaction (not a leave-last-out split)")
    return replace(splits, test=replace(t, end=end))


def ml100k_test_cases(data=None, protocol: str = DEFAULT_PROTOCOL) -> pd.DataFrame:
    """For each ML-100k user: the training history and the held-out test interaction.

    The history is the user's train + valid interactions (all but the last) in the protocol's
    order (standard: `load_ml100k().interactions`, time with ties in file order): the order the
    events are produced to Kafka (`ml100k_events(split="train_valid")`), applied by the stream
    and kept by SequenceStore, so a live service holds the same sequence.

    Returns:
        one row per user (sorted by user_id as an int): user_id (str), history (list[str] item ids,
        oldest first), history_ts_ms (list[int]), test_item_id (str), test_ts_ms (int).
    """
    if data is None:
        from pipelines.data.movielens import load_ml100k

        data = load_ml100k()
    inter = order_interactions(data.interactions, protocol)
    from_end = leave_last_out(inter)
    train = inter[from_end >= 1]
    test = inter[from_end == 0].set_index("user_id")
    hist = train.groupby("user_id", sort=False).agg(history=("item_id", list), history_ts_ms=("ts_ms", list))
    out = test[["item_id", "ts_ms"]].rename(columns={"item_id": "test_item_id", "ts_ms": "test_ts_ms"}).join(hist)
    out["history"] = out["history"].apply(lambda h: h if isinstance(h, list) else [])
    out["history_ts_ms"] = out["history_ts_ms"].apply(lambda h: [int(t) for t in h] if isinstance(h, list) else [])
    out = out.reset_index()
    out = out.iloc[np.argsort(out["user_id"].astype(int).to_numpy(), kind="stable")].reset_index(drop=True)
    return out[["user_id", "history", "history_ts_ms", "test_item_id", "test_ts_ms"]]


def build_ctr_samples(frame: pd.DataFrame, n_user_rows: int, hist_len: int,
                      behaviour_types: Sequence[int] = (VIEW, CLICK)) -> tuple[Samples, np.ndarray]:
    """Impressions labelled by a later click on the same request and item.

    Args:
        frame: int-coded events: user, item (embedding rows), type, ts_ms, request.
        behaviour_types: event types that form the behaviour sequence.
    Returns:
        (samples, request number of each sample).
    """
    beh = frame[frame["type"].isin(list(behaviour_types))]
    store = SequenceStore(beh["user"].to_numpy(), beh["item"].to_numpy(), beh["ts_ms"].to_numpy(), n_user_rows)
    imp = frame[frame["type"] == IMPRESSION]
    clicks = frame[frame["type"] == CLICK][["request", "item", "ts_ms"]].rename(columns={"ts_ms": "click_ts"})
    imp = imp.merge(clicks, on=["request", "item"], how="left")
    label = (imp["click_ts"].notna() & (imp["click_ts"] >= imp["ts_ms"])).to_numpy(np.float32)
    u, ts = imp["user"].to_numpy(np.int64), imp["ts_ms"].to_numpy(np.int64)
    samples = Samples(store, u, imp["item"].to_numpy(np.int64), ts, store.end_before(u, ts), hist_len, label)
    return samples, imp["request"].to_numpy(np.int64)


def build_synthetic_ctr(cfg: SyntheticConfig, hist_len: int | None = None,
                        behaviour_types: Sequence[int] = (VIEW,), n_valid_rounds: int = 1,
                        n_test_rounds: int = 2) -> Splits:
    """Synthetic CTR samples split by time: the last `n_test_rounds` impression rounds are the test
    set (several impressions per user, so GAUC is defined), the `n_valid_rounds` before them validation.

    Behaviours default to views only: the clicks on impressions are the labels, and keeping them
    out of the history keeps the long-term interests strictly invisible in the last 50 behaviours.
    """
    world = generate_world(cfg)
    users = Vocab("user", [f"u{i}" for i in range(cfg.n_users)])
    items = Vocab("item", [f"i{i}" for i in range(cfg.n_items)])
    cats = Vocab("item_cat", [f"c{i}" for i in range(cfg.n_categories)])
    frame = world.frame.assign(user=world.frame["user"] + 1, item=world.frame["item"] + 1)  # ids -> rows
    samples, request = build_ctr_samples(frame, users.size, hist_len or cfg.seq_len, behaviour_types)
    t0 = cfg.start_ts_ms + cfg.seq_len * cfg.view_gap_ms + cfg.impression_gap_ms
    if n_valid_rounds + n_test_rounds >= cfg.n_impressions:
        raise ValueError(f"n_valid_rounds ({n_valid_rounds}) + n_test_rounds ({n_test_rounds}) must be < "
                         f"n_impressions ({cfg.n_impressions}) to leave training rounds")
    valid_start = t0 + (cfg.n_impressions - n_test_rounds - n_valid_rounds) * cfg.impression_gap_ms
    test_start = valid_start + n_valid_rounds * cfg.impression_gap_ms
    item_cat = np.zeros(items.size, dtype=np.int64)
    item_cat[1 : cfg.n_items + 1] = world.item_category + 1
    ts = samples.ts_ms
    return Splits(
        "ranking",
        samples.subset(np.flatnonzero(ts < valid_start)),
        samples.subset(np.flatnonzero((ts >= valid_start) & (ts < test_start))),
        samples.subset(np.flatnonzero(ts >= test_start)),
        {"user": users, "item": items, "item_cat": cats},
        item_cat,
        catalogue=np.arange(1, cfg.n_items + 1),
        meta={"dataset": "synthetic", "split": "time", "valid_start_ts_ms": int(valid_start),
              "test_start_ts_ms": int(test_start), "behaviour_types": [int(t) for t in behaviour_types]},
        extras={"click_prob_test": world.click_prob[request[ts >= test_start]], "world": world},
    )


def build_synthetic_retrieval(cfg: SyntheticConfig, hist_len: int = 200) -> Splits:
    """Retrieval on the synthetic views, leave-last-out per user (small, offline: used by tests)."""
    world = generate_world(cfg)
    views = world.frame[world.frame["type"] == VIEW]
    users = Vocab("user", [f"u{i}" for i in range(cfg.n_users)])
    items = Vocab("item", [f"i{i}" for i in range(cfg.n_items)])
    cats = Vocab("item_cat", [f"c{i}" for i in range(cfg.n_categories)])
    u = views["user"].to_numpy(np.int64) + 1
    it = views["item"].to_numpy(np.int64) + 1
    ts = views["ts_ms"].to_numpy(np.int64)
    store = SequenceStore(u, it, ts, users.size)
    from_end = pd.Series(u).groupby(u).cumcount(ascending=False).to_numpy()
    end = store.end_before(u, ts)

    def part(mask: np.ndarray) -> Samples:
        return Samples(store, u[mask], it[mask], ts[mask], end[mask], hist_len)

    item_cat = np.zeros(items.size, dtype=np.int64)
    item_cat[1 : cfg.n_items + 1] = world.item_category + 1
    return Splits("retrieval", part(from_end >= 2), part(from_end == 1), part(from_end == 0),
                  {"user": users, "item": items, "item_cat": cats}, item_cat, catalogue=np.arange(1, cfg.n_items + 1),
                  meta={"dataset": "synthetic", "split": "leave-last-out"})
