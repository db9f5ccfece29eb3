"""features/vectors.py: the one transform from raw stream features to model inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.feast_repo import apply_repo
from features.item_features import ITEM_FEATURE_NAMES, InMemoryItemFeatures
from features.repo.definitions import ITEM_FEATURES, USER_FEATURES
from features.vectors import (
    ITEM_VECTOR_NAMES,
    USER_RAW_NAMES,
    USER_VECTOR_NAMES,
    default_item_features,
    default_user_features,
    item_feature_matrix,
    item_raw_from_frame,
    user_feature_matrix,
)


def _user_frame() -> pd.DataFrame:
    rows = []
    for u, clicks, likes, imps in (("u1", 3, 2, 0), ("u2", 10, 1, 20)):
        row = {"user_id": u, "recent_genres": "Drama"}
        for win in ("1h", "24h", "7d"):
            row.update({f"impressions_{win}": imps, f"clicks_{win}": clicks, f"likes_{win}": likes})
        row.update(ctr_24h=clicks / imps if imps else 0.0, ctr_7d=clicks / imps if imps else 0.0)
        rows.append(row)
    rows.append({"user_id": "new", **{n: None for n in USER_FEATURES}})  # what Feast returns for an unknown user
    return pd.DataFrame(rows)


def _item_frame() -> pd.DataFrame:
    df = pd.DataFrame({"item_id": ["i1", "i2"], "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC")})
    for n in ITEM_FEATURES:
        df[n] = [4, 0]
    df["ctr_7d"] = np.float32(0.25)
    df["popularity"] = np.float32(3.7)
    df["age_s"] = np.float32(2 * 86_400.0)
    return df


def test_user_vectors_transform_and_missing_indicator():
    x = user_feature_matrix(_user_frame())
    assert x.shape == (3, len(USER_VECTOR_NAMES)) and x.dtype == np.float32
    col = {n: x[:, k] for k, n in enumerate(USER_VECTOR_NAMES)}
    np.testing.assert_allclose(col["log1p_clicks_7d"][:2], np.log1p([3, 10]), rtol=1e-6)
    np.testing.assert_allclose(col["like_rate_7d"][:2], [2 / 3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(col["ctr_7d"][:2], [0.0, 0.5], rtol=1e-6)
    assert col["missing"].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(x[2], default_user_features(1)[0])  # unknown user = the defaults
    assert default_user_features(2)[:, :-1].sum() == 0 and (default_user_features(2)[:, -1] == 1).all()
    assert "recent_genres" not in USER_RAW_NAMES  # strings are not model inputs


def test_user_vectors_accept_float_nan_rows_from_a_join():
    df = _user_frame()
    df.loc[0, "clicks_7d"] = np.nan  # a partial row counts as missing
    x = user_feature_matrix(df.astype({n: "float64" for n in USER_RAW_NAMES}))
    assert x[0, -1] == 1 and (x[0, :-1] == 0).all() and x[1, -1] == 0
    with pytest.raises(KeyError, match="clicks_7d"):
        user_feature_matrix(df.drop(columns=["clicks_7d"]))


def test_item_training_and_serving_paths_are_identical():
    """The same rows through the Feast frame path (training) and the packed blobs (serving)."""
    df = _item_frame()
    blobs = InMemoryItemFeatures()
    blobs.write(df)
    served = item_feature_matrix(blobs.read(["i1", "i2", "unknown"]))
    trained = item_feature_matrix(item_raw_from_frame(df))
    np.testing.assert_array_equal(served[:2], trained)
    np.testing.assert_array_equal(served[2], default_item_features(1)[0])
    col = {n: served[:, k] for k, n in enumerate(ITEM_VECTOR_NAMES)}
    np.testing.assert_allclose(col["log1p_age_days"][0], np.log1p(2.0), rtol=1e-6)
    np.testing.assert_allclose(col["log1p_popularity"][0], np.log1p(3.7), rtol=1e-6)
    assert col["like_rate_7d"].tolist() == [1.0, 0.0, 0.0] and col["missing"].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="ITEM|impressions_24h"):
        item_feature_matrix(np.zeros((2, len(ITEM_FEATURE_NAMES) - 1)))


def test_online_and_offline_feast_reads_give_the_same_vectors(tmp_path):
    repo = apply_repo(tmp_path / "feast", online="sqlite")
    users = _user_frame().iloc[:2].assign(event_timestamp=pd.Timestamp("2024-01-02", tz="UTC"))
    repo.push_user_features(users)
    repo.push_item_features(_item_frame())
    online = user_feature_matrix(repo.online_user_features(["u1", "u2", "new"]))
    entity = pd.DataFrame({"user_id": ["u1", "u2", "new", "u1"],
                           "event_timestamp": pd.to_datetime(["2024-01-03", "2024-01-03", "2024-01-03", "2024-01-01"], utc=True)})
    offline = user_feature_matrix(repo.historical_features(entity))
    np.testing.assert_array_equal(offline[:3], online)
    np.testing.assert_array_equal(offline[3], default_user_features(1)[0])  # before the user's first row
    items_online = item_feature_matrix(item_raw_from_frame(repo.online_item_features(["i1", "i2", "x"])))
    items_offline = item_feature_matrix(item_raw_from_frame(repo.historical_features(pd.DataFrame(
        {"item_id": ["i1", "i2", "x"], "event_timestamp": pd.Timestamp("2024-02-01", tz="UTC")}))))
    np.testing.assert_array_equal(items_online, items_offline)
    assert items_online[2, -1] == 1


def test_serving_reader_equals_feasts_online_read(tmp_path):
    """OnlineRowReader (registry resolved once) gives Feast's get_online_features values, and
    the rows -> raw path gives the vectors the frame path gives, for known, partial and unknown users."""
    from features.feast_online import OnlineRowReader
    from features.vectors import user_raw_from_frame, user_raw_from_rows, user_vectors_from_raw

    repo = apply_repo(tmp_path / "feast", online="sqlite")
    users = _user_frame().iloc[:2].assign(event_timestamp=pd.Timestamp("2024-01-02", tz="UTC"))
    users.loc[1, "ctr_24h"] = 0.123456789  # a float32-rounding value
    repo.push_user_features(users)
    ids = ["u2", "new", "u1"]
    sdk = repo.online_user_features(ids)
    rows = OnlineRowReader(repo).rows(ids)
    assert rows[1] is None
    for row, (_, expected) in zip(rows, sdk.iterrows()):
        if row is None:
            assert expected[list(USER_RAW_NAMES)].isna().all()
            continue
        assert set(row) == set(USER_FEATURES)
        assert row["recent_genres"] == expected["recent_genres"]
        for name in USER_RAW_NAMES:
            assert row[name] == pytest.approx(expected[name], rel=1e-7), name
    np.testing.assert_array_equal(user_raw_from_rows(rows), user_raw_from_frame(sdk))
    np.testing.assert_array_equal(user_vectors_from_raw(user_raw_from_rows(rows)), user_feature_matrix(sdk))
    partial = user_raw_from_rows([{**rows[0], "clicks_7d": None}])[0]
    assert np.isnan(partial[USER_RAW_NAMES.index("clicks_7d")]) and np.isfinite(np.delete(partial, USER_RAW_NAMES.index("clicks_7d"))).all()
