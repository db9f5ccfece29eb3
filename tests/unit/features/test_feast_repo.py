"""Feast repository on SQLite: apply, push, online read, point-in-time join without leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import FeatureRepoError
from features.feast_repo import apply_repo, feast_redis_connection_string, open_repo
from features.repo.definitions import ITEM_FEATURES, USER_FEATURES


def _user_row(user_id: str, ts: str, clicks: int) -> dict:
    row = {"user_id": user_id, "event_timestamp": pd.Timestamp(ts, tz="UTC")}
    for name, dtype in USER_FEATURES.items():
        row[name] = f"g{clicks}|drama" if str(dtype) == "String" else clicks
    return row


def _item_row(item_id: str, ts: str, clicks: int) -> dict:
    row = {"item_id": item_id, "event_timestamp": pd.Timestamp(ts, tz="UTC")}
    row.update({name: clicks for name in ITEM_FEATURES})
    return row


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = apply_repo(tmp_path_factory.mktemp("feast"), online="sqlite")
    repo.push_user_features(
        pd.DataFrame(
            [
                _user_row("u1", "2024-01-01 00:00", 1),
                _user_row("u1", "2024-01-02 00:00", 2),
                _user_row("u2", "2024-01-01 12:00", 5),
            ]
        )
    )
    repo.push_item_features(pd.DataFrame([_item_row("i1", "2024-01-01 00:00", 7), _item_row("i1", "2024-01-03 00:00", 9)]))
    return repo


def test_yaml_is_generated_per_online_store(repo, tmp_path):
    text = (repo.repo_dir / "feature_store.yaml").read_text()
    assert "type: sqlite" in text and "type: file" in text
    from features.feast_repo import write_feature_store_yaml

    path = write_feature_store_yaml(tmp_path, "redis", "redis://:s3cret@redis.svc:6380/2")
    assert 'connection_string: "redis.svc:6380,db=2,password=s3cret"' in path.read_text()
    with pytest.raises(FeatureRepoError, match="redis_url"):
        write_feature_store_yaml(tmp_path, "redis")
    assert feast_redis_connection_string("rediss://h:1/0") == "h:1,db=0,ssl=true"


def test_a_redis_cluster_url_gives_feasts_cluster_store(tmp_path):
    from features.feast_repo import write_feature_store_yaml

    text = write_feature_store_yaml(tmp_path, "redis", "redis+cluster://n1:7000,n2:7001").read_text()
    assert 'connection_string: "n1:7000,n2:7001"' in text and "redis_type: redis_cluster" in text
    assert feast_redis_connection_string("rediss+cluster://n1:7000") == "n1:7000,ssl=true"
    with pytest.raises(FeatureRepoError, match="node 'n1' must be host:port"):
        feast_redis_connection_string("redis+cluster://n1")


def test_online_read_returns_latest_and_nulls_for_unknown(repo):
    df = repo.online_user_features(["u1", "u2", "nobody"], ["clicks_1h", "ctr_7d", "recent_genres"])
    assert df["clicks_1h"].tolist()[:2] == [2, 5]
    assert df["recent_genres"].tolist()[:2] == ["g2|drama", "g5|drama"]
    assert pd.isna(df["clicks_1h"].iloc[2])
    items = open_repo(repo.repo_dir).online_item_features(["i1"], ["clicks_7d", "popularity"])
    assert items["clicks_7d"].tolist() == [9] and items["popularity"].tolist() == [pytest.approx(9.0)]


def test_point_in_time_join_has_no_leakage(repo):
    entity = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u1"],
            "item_id": ["i1", "i1", "i1", "i1", "i9"],
            "event_timestamp": pd.to_datetime(
                ["2023-12-31 00:00", "2024-01-01 06:00", "2024-01-03 00:00", "2024-01-01 11:00", "2024-01-01 00:00"],
                utc=True,
            ),
            "label": [0, 1, 0, 1, 1],
        }
    )
    out = repo.historical_features(entity, user_features=["clicks_1h"], item_features=["clicks_7d"])
    assert out["label"].tolist() == [0, 1, 0, 1, 1]  # every row kept, in input order
    clicks = out["clicks_1h"].tolist()
    # before any value -> null; between pushes -> the earlier one; later -> the latest
    assert pd.isna(clicks[0]) and clicks[1] == 1 and clicks[2] == 2 and pd.isna(clicks[3])
    assert clicks[4] == 1  # a row exactly at a push's timestamp sees that push
    items = out["clicks_7d"].tolist()
    assert items[1] == 7 and items[2] == 9 and pd.isna(items[4])
    assert np.isnan(float(items[0]))


def test_push_rejects_missing_columns(repo):
    with pytest.raises(FeatureRepoError, match="ctr_7d"):
        repo.push_item_features(pd.DataFrame([_item_row("i2", "2024-01-01", 1)]).drop(columns="ctr_7d"))
