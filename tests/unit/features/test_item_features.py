"""Packed item-feature rows: layout, latest-wins, unknown items."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.item_features import ITEM_FEATURE_NAMES, InMemoryItemFeatures, pack_item_rows, schema_id


def _df(rows):
    df = pd.DataFrame(rows, columns=["item_id", "event_timestamp", "v"])
    for k, name in enumerate(ITEM_FEATURE_NAMES):
        df[name] = df["v"] * 10 + k
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df


def test_latest_row_wins_and_unknown_items_are_nan():
    store = InMemoryItemFeatures()
    store.write(_df([("a", "2024-01-02", 2), ("a", "2024-01-01", 1), ("b", "2024-01-01", 3)]))
    got = store.read(["b", "zzz", "a"])
    assert got.shape == (3, len(ITEM_FEATURE_NAMES)) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], 30 + np.arange(len(ITEM_FEATURE_NAMES)))
    np.testing.assert_array_equal(got[2], 20 + np.arange(len(ITEM_FEATURE_NAMES)))
    assert np.isnan(got[1]).all()


def test_blob_layout_is_header_plus_float32():
    blobs = pack_item_rows(_df([("a", "2024-01-02", 2)]))
    blob = blobs["a"]
    assert len(blob) == 12 + 4 * len(ITEM_FEATURE_NAMES)
    assert int.from_bytes(blob[:4], "little") == schema_id(ITEM_FEATURE_NAMES)
    assert schema_id(ITEM_FEATURE_NAMES) != schema_id(ITEM_FEATURE_NAMES[::-1])
