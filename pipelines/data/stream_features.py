"""Training data from what the stream wrote: every sample's dense features, point-in-time from
the Feast offline store that the feature-writer filled.

For a sample of user u and item i at time t, the features are `FeatureRepo.historical_features`
for (u, t - 1 ms) and (i, t - 1 ms): the latest offline row strictly before the sample's own
instant, so a sample never sees its own event (nor any other event of that millisecond, as the
SequenceStore history does not). Serving reads the online store at request time, which likewise
holds only earlier events. Both go through `features.vectors`, the one transform.

For the offline store to hold an entity's features after each of its events, the stream must have
been processed with offline history (`recstream process feature-writer --offline-history`, see
pipelines/stream/feature_publisher.py); without it an entity streamed in bulk has one or two
offline rows and early samples join to older rows or to nothing ("missing"). `meta["features"]`
reports how many samples found no row.

Retrieval evaluation scores every catalogue item with its features as of the end of the data
(the last sample's time): what a live service reads after the stream has processed everything.
For a validation or test sample earlier than that, those item features include later events (item
popularity from after the sample); that is the serving condition a live/offline comparison needs,
and it is documented in the manifest's data window.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pandas as pd

from features.repo.definitions import TIMESTAMP_FIELD
from features.vectors import (
    ITEM_RAW_NAMES,
    ITEM_VECTOR_NAMES,
    USER_RAW_NAMES,
    USER_VECTOR_NAMES,
    default_item_features,
    item_feature_matrix,
    item_raw_from_frame,
    user_raw_from_frame,
    user_vectors_from_raw,
)
from pipelines.data.datasets import Samples, Splits

log = logging.getLogger(__name__)

JOIN_OFFSET_MS = 1  # features as of t - 1 ms: never the sample's own event


def join_raw(repo, kind: str, ids: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Point-in-time raw features of (id, ts_ms) pairs from the offline store.

    Args:
        repo: features.feast_repo.FeatureRepo.
        kind: "user" or "item".
        ids: (n,) raw string ids; ts_ms: (n,) join times (epoch ms; the row at or before each wins).
    Returns:
        (n, len(USER_RAW_NAMES) or len(ITEM_RAW_NAMES)) float32, NaN rows where no row existed yet.
    """
    if kind not in ("user", "item"):
        raise ValueError(f"kind ({kind!r}) must be user or item")
    key = f"{kind}_id"
    pairs = pd.DataFrame({key: np.asarray(ids, dtype=object), "ts_ms": np.asarray(ts_ms, dtype=np.int64)})
    uniq = pairs.drop_duplicates().reset_index(drop=True)  # samples share (entity, time) often: join each once
    entity = pd.DataFrame({key: uniq[key], TIMESTAMP_FIELD: pd.to_datetime(uniq["ts_ms"], unit="ms", utc=True)})
    if kind == "user":
        joined = repo.historical_features(entity, user_features=list(USER_RAW_NAMES), item_features=[])
        raw = user_raw_from_frame(joined)
    else:
        joined = repo.historical_features(entity, user_features=[], item_features=list(ITEM_RAW_NAMES))
        raw = item_raw_from_frame(joined)
    pos = pairs.merge(uniq.reset_index(), on=[key, "ts_ms"], how="left")["index"].to_numpy()
    return raw[pos]


def _tokens(vocab) -> np.ndarray:
    """Row -> raw id ("" for padding and OOV rows, which never occur in built samples)."""
    out = np.full(vocab.size, "", dtype=object)
    out[1 : len(vocab) + 1] = vocab.tokens
    return out


def attach_stream_features(splits: Splits, repo=None, settings=None) -> Splits:
    """The splits with `user_feats` / `item_feats` on every sample, joined point-in-time (t - 1 ms)
    from the Feast offline store, and `catalogue_item_feats` as of the end of the data.

    Args:
        splits: ML-100k (or any) splits whose vocabularies map rows to the ids the stream used.
        repo: a FeatureRepo; None = the deployment's (`repo_for_settings(settings)`).
        settings: recstream Settings for that repo (default: from the environment).
    Returns:
        a copy of `splits`; meta["features"] records the source, the join, the vector names and
        the share of samples that found no row (missing).
    """
    if repo is None:
        from features.feast_repo import repo_for_settings
        from recstream.settings import get_settings

        repo = repo_for_settings(settings or get_settings())
    t0 = time.perf_counter()
    user_tok, item_tok = _tokens(splits.vocabs["user"]), _tokens(splits.vocabs["item"])
    parts = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    sizes = [len(s) for s in parts.values()]
    users = np.concatenate([user_tok[s.user] for s in parts.values()])
    items = np.concatenate([item_tok[s.item] for s in parts.values()])
    ts = np.concatenate([s.ts_ms for s in parts.values()]) - JOIN_OFFSET_MS
    end_ts = int(max(s.ts_ms.max(initial=0) for s in parts.values()))
    cat = np.asarray(splits.catalogue)
    user_x = user_vectors_from_raw(join_raw(repo, "user", users, ts))  # (n, Fu)
    item_raw = join_raw(repo, "item", np.concatenate([items, item_tok[cat]]),
                        np.concatenate([ts, np.full(len(cat), end_ts)]))
    item_x = item_feature_matrix(item_raw)  # (n + C, Fi)
    catalogue_feats = default_item_features(splits.vocabs["item"].size)
    catalogue_feats[cat] = item_x[len(items):]
    bounds = np.cumsum([0, *sizes])
    out: dict[str, Samples] = {}
    missing: dict[str, dict[str, float]] = {}
    for (name, s), lo, hi in zip(parts.items(), bounds[:-1], bounds[1:]):
        out[name] = dataclasses.replace(s, user_feats=user_x[lo:hi], item_feats=item_x[lo:hi])
        missing[name] = {"user": float(user_x[lo:hi, -1].mean()) if hi > lo else 0.0,
                         "item": float(item_x[lo:hi, -1].mean()) if hi > lo else 0.0}
    seconds = time.perf_counter() - t0
    meta = {"source": "feast_offline", "project": repo.project, "join": f"sample ts - {JOIN_OFFSET_MS} ms",
            "catalogue_item_features_as_of_ts_ms": end_ts,
            "user_vector_names": list(USER_VECTOR_NAMES), "item_vector_names": list(ITEM_VECTOR_NAMES),
            "missing_fraction": missing, "join_seconds": round(seconds, 1)}
    log.info("stream features joined for %d samples in %.1f s (missing: %s)", len(users), seconds, missing)
    return dataclasses.replace(splits, train=out["train"], valid=out["valid"], test=out["test"],
                               catalogue_item_feats=catalogue_feats, meta={**splits.meta, "features": meta})
