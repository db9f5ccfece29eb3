"""The numeric feature vectors the models take: one definition for training and serving.

The stream writes the raw features (`features/repo/definitions.py`); training reads them
point-in-time from the Feast offline store, serving reads them from the Feast online store (users)
and the packed item blobs (items, `features/item_features.py`). Both sides turn the raw values into
model inputs here and nowhere else, so a feature cannot be transformed one way for training and
another way for serving.

Raw layouts (float32, NaN = no value):
- user raw (B, len(USER_RAW_NAMES)): the numeric user features in USER_FEATURES order
  (`recent_genres` is a string and is not a model input);
- item raw (N, len(ITEM_FEATURE_NAMES)): exactly the packed blob layout.

Transforms (computed in float64, returned as float32; the raw values are cast to float32 first on
every path, as the blobs store them, so both paths give bit-identical vectors):
- counts, popularity, age (days): log1p(max(x, 0)), so heavy users/items do not dominate;
- CTRs as they are (already in [0, 1]); `like_rate_7d` = likes_7d / clicks_7d (0 without clicks):
  the share of engagements that were likes (for MovieLens, ratings >= 4);
- `missing` = 1 when the entity has no feature row yet (a new user or item, a row the stores do
  not hold, a feature store outage at serving): the whole row is then the defaults (zeros) with
  missing = 1, so "no features" is an input of its own, not "zero activity". A row with any null
  numeric value counts as missing (the writer always writes complete rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.item_features import ITEM_FEATURE_NAMES
from features.repo.definitions import USER_FEATURES

__all__ = [
    "USER_RAW_NAMES",
    "USER_VECTOR_NAMES",
    "ITEM_RAW_NAMES",
    "ITEM_VECTOR_NAMES",
    "user_raw_from_frame",
    "user_raw_from_rows",
    "user_vectors_from_raw",
    "user_feature_matrix",
    "item_raw_from_frame",
    "item_feature_matrix",
    "default_user_features",
    "default_item_features",
]

USER_RAW_NAMES: tuple[str, ...] = tuple(n for n, t in USER_FEATURES.items() if str(t) != "String")
ITEM_RAW_NAMES: tuple[str, ...] = ITEM_FEATURE_NAMES

_USER_COUNTS = tuple(n for n in USER_RAW_NAMES if not n.startswith("ctr_"))
_ITEM_COUNTS = tuple(n for n in ITEM_RAW_NAMES if n.split("_")[0] in ("impressions", "clicks", "likes"))

USER_VECTOR_NAMES: tuple[str, ...] = (
    *(f"log1p_{n}" for n in _USER_COUNTS), "ctr_24h", "ctr_7d", "like_rate_7d", "missing")
ITEM_VECTOR_NAMES: tuple[str, ...] = (
    *(f"log1p_{n}" for n in _ITEM_COUNTS), "ctr_7d", "like_rate_7d", "log1p_popularity", "log1p_age_days",
    "missing")

_DAY_S = 86_400.0


def _raw_from_frame(df: pd.DataFrame, names: tuple[str, ...], what: str) -> np.ndarray:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise KeyError(f"{what} feature frame lacks columns {missing} (has {list(df.columns)})")
    # float64 first (Int64 columns with nulls become NaN), then float32 like the packed blobs
    return df[list(names)].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0))


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _finish(cols: list[np.ndarray], missing: np.ndarray) -> np.ndarray:
    out = np.stack([*cols, np.zeros(len(missing))], axis=1)  # (B, F)
    out[missing] = 0.0
    out[:, -1] = missing
    return out.astype(np.float32)


def _check_raw(raw: np.ndarray, names: tuple[str, ...], what: str) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(f"{what} raw features must be (n, {len(names)}) in {names} order, got shape {raw.shape}")
    return raw.astype(np.float64)


def user_raw_from_frame(df: pd.DataFrame) -> np.ndarray:
    """(B, len(USER_RAW_NAMES)) float32 raw user features from a frame with the Feast user columns
    (FeatureRepo.online_user_features or historical_features); nulls become NaN."""
    return _raw_from_frame(df, USER_RAW_NAMES, "user")


def user_raw_from_rows(rows: list[dict[str, object] | None]) -> np.ndarray:
    """(B, len(USER_RAW_NAMES)) float32 raw user features from row dicts (OnlineRowReader.rows),
    the same values user_raw_from_frame gives for the same rows; None (no row) and None values
    become NaN. Serving's path: no frame per request."""
    x = np.array([[np.nan if row is None or row.get(n) is None else row[n] for n in USER_RAW_NAMES] for row in rows],
                 dtype=np.float64).reshape(len(rows), len(USER_RAW_NAMES))
    return x.astype(np.float32)


def user_vectors_from_raw(raw: np.ndarray) -> np.ndarray:
    """(B, len(USER_RAW_NAMES)) raw -> (B, len(USER_VECTOR_NAMES)) float32 model inputs."""
    x = _check_raw(raw, USER_RAW_NAMES, "user")
    col = {n: x[:, k] for k, n in enumerate(USER_RAW_NAMES)}
    missing = np.isnan(x).any(axis=1)
    cols = [_log1p(col[n]) for n in _USER_COUNTS]
    cols += [col["ctr_24h"], col["ctr_7d"], _ratio(col["likes_7d"], col["clicks_7d"])]
    return _finish(cols, missing)


def user_feature_matrix(df: pd.DataFrame) -> np.ndarray:
    """(B, len(USER_VECTOR_NAMES)) float32 user vectors from a Feast user feature frame.

    Args:
        df: one row per user with the USER_FEATURES columns (other columns are ignored); a row
            whose numeric features are null (unknown user, no row as of the join time) gives the
            defaults with missing = 1.
    """
    return user_vectors_from_raw(user_raw_from_frame(df))


def item_raw_from_frame(df: pd.DataFrame) -> np.ndarray:
    """(N, len(ITEM_FEATURE_NAMES)) float32 in the packed-blob layout from a frame with the
    ITEM_FEATURES columns (historical_features, online_item_features); nulls become NaN rows."""
    return _raw_from_frame(df, ITEM_RAW_NAMES, "item")


def item_feature_matrix(raw: np.ndarray) -> np.ndarray:
    """(N, len(ITEM_FEATURE_NAMES)) raw (packed blob layout, NaN rows for unknown items) ->
    (N, len(ITEM_VECTOR_NAMES)) float32 item vectors."""
    x = _check_raw(raw, ITEM_RAW_NAMES, "item")
    col = {n: x[:, k] for k, n in enumerate(ITEM_RAW_NAMES)}
    missing = np.isnan(x).any(axis=1)
    cols = [_log1p(col[n]) for n in _ITEM_COUNTS]
    cols += [col["ctr_7d"], _ratio(col["likes_7d"], col["clicks_7d"]), _log1p(col["popularity"]),
             _log1p(col["age_s"] / _DAY_S)]
    return _finish(cols, missing)


def default_user_features(n: int) -> np.ndarray:
    """(n, len(USER_VECTOR_NAMES)) float32: the "no features" vector (zeros, missing = 1)."""
    return user_vectors_from_raw(np.full((n, len(USER_RAW_NAMES)), np.nan, dtype=np.float32))


def default_item_features(n: int) -> np.ndarray:
    """(n, len(ITEM_VECTOR_NAMES)) float32: the "no features" vector (zeros, missing = 1)."""
    return item_feature_matrix(np.full((n, len(ITEM_RAW_NAMES)), np.nan, dtype=np.float32))
