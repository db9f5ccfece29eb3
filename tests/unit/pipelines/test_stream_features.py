"""Training on stream features without servers: a SQLite-online Feast repo whose offline store holds
the rows a feature-writer with offline history writes (one per entity and event time, computed here
by the feature oracle, tests/feature_oracle.py), joined point-in-time into ML-100k-style CTR and retrieval
samples, trained, saved with the feature vector names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from features.feast_repo import apply_repo
from features.vectors import (
    ITEM_RAW_NAMES,
    ITEM_VECTOR_NAMES,
    USER_RAW_NAMES,
    USER_VECTOR_NAMES,
    item_feature_matrix,
    user_vectors_from_raw,
)
from models.sdim_hash import SdimConfig
from pipelines.data.datasets import (
    Samples,
    build_ml100k_ctr,
    build_ml100k_retrieval,
    ml100k_test_cases,
    with_streamed_test_history,
)
from pipelines.data.movielens import Ml100k, ml100k_events, split_mask
from pipelines.data.stream_features import attach_stream_features
from pipelines.training.jobs import TrainJob, run_job, save_job
from pipelines.training.loop import TrainConfig
from recstream.events import Event, EventType
from tests.builders import HOUR_MS
from tests.feature_oracle import item_row, user_row

torch.set_num_threads(1)
T0 = 880_000_000_000


def _data() -> Ml100k:
    """4 users, 12 items, ratings in bursts with shared timestamps (as in ML-100k)."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(1, 5):
        t = T0 + u * 1000
        for k in range(9):
            t += int(rng.choice([0, 0, 1000, 3 * HOUR_MS]))  # same-second ratings, then gaps
            rows.append((str(u), str(int(rng.integers(1, 13))), float(rng.integers(1, 6)), t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts_ms"]).drop_duplicates(["user_id", "item_id"])
    inter = inter.sort_values(["ts_ms", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 13)], "title": "t", "year": "1990",
                          "genres": ["Drama", "Comedy", "Action"] * 4})
    users = pd.DataFrame({"user_id": [str(u) for u in range(1, 5)], "age": 30, "gender": "M", "occupation": "x",
                          "zip_code": "0"})
    return Ml100k(inter, items, users)


def _events(data: Ml100k) -> list[Event]:
    i = data.interactions
    return [Event(event_id=f"e{k}", user_id=u, item_id=it, type=EventType.rating, ts=int(t), value=r)
            for k, (u, it, r, t) in enumerate(zip(i["user_id"], i["item_id"], i["rating"], i["ts_ms"]))]


def _state(events: list[Event], kind: str, entity: str, before_ms: int | None = None) -> dict | None:
    """The entity's feature row over its events (before `before_ms`), by the oracle."""
    evs = [e for e in events if getattr(e, f"{kind}_id") == entity and (before_ms is None or e.ts < before_ms)]
    if not evs:
        return None
    return user_row(evs) if kind == "user" else item_row(evs)


def _offline_history(events: list[Event], kind: str) -> pd.DataFrame:
    """One row per entity and distinct event time: what --offline-history leaves in the offline store."""
    rows = []
    for entity in sorted({getattr(e, f"{kind}_id") for e in events}):
        for t in sorted({e.ts for e in events if getattr(e, f"{kind}_id") == entity}):
            rows.append({f"{kind}_id": entity, **_state(events, kind, entity, t + 1)})
    df = pd.DataFrame(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], unit="ms", utc=True)
    return df


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    data = _data()
    events = _events(data)
    repo = apply_repo(tmp_path_factory.mktemp("feast"), online="sqlite")
    repo.push_user_features(_offline_history(events, "user"), online=False)
    repo.push_item_features(_offline_history(events, "item"), online=False)
    return data, events, repo


def _expected(events, kind, entity, before_ms) -> np.ndarray:
    row = _state(events, kind, entity, before_ms)
    names = USER_RAW_NAMES if kind == "user" else ITEM_RAW_NAMES
    raw = np.array([[np.nan if row is None else row[n] for n in names]], dtype=np.float32)
    return user_vectors_from_raw(raw)[0] if kind == "user" else item_feature_matrix(raw)[0]


def test_joined_features_are_the_state_strictly_before_each_sample(stream):
    data, events, repo = stream
    splits = attach_stream_features(build_ml100k_ctr(hist_len=10, data=data), repo)
    users, items = splits.vocabs["user"], splits.vocabs["item"]
    for part in (splits.train, splits.valid, splits.test):
        assert part.user_feats.shape == (len(part), len(USER_VECTOR_NAMES))
        assert part.item_feats.shape == (len(part), len(ITEM_VECTOR_NAMES))
        for k in range(len(part)):
            u, i, t = users.tokens[part.user[k] - 1], items.tokens[part.item[k] - 1], int(part.ts_ms[k])
            np.testing.assert_array_equal(part.user_feats[k], _expected(events, "user", u, t))
            np.testing.assert_array_equal(part.item_feats[k], _expected(events, "item", i, t))
    assert splits.train.user_feats[:, -1].max() == 1  # each user's first burst has no features yet
    assert splits.meta["features"]["user_vector_names"] == list(USER_VECTOR_NAMES)
    # retrieval evaluation scores the catalogue with the features at the end of the data
    end = int(max(p.ts_ms.max() for p in (splits.train, splits.valid, splits.test)))
    for tok in items.tokens:
        np.testing.assert_array_equal(splits.catalogue_item_feats[items.index(tok)],
                                      _expected(events, "item", tok, end + 1))
    batch = splits.train.batch(np.arange(3))
    assert batch["user_feats"].dtype == torch.float32 and batch["item_feats"].shape == (3, len(ITEM_VECTOR_NAMES))


def test_ctr_label_is_rating_at_least_4_plus_unseen_negatives(stream):
    data, _, _ = stream
    s = build_ml100k_ctr(hist_len=10, data=data)
    n = len(s.train) // 2
    ratings = data.interactions["rating"].to_numpy()[split_mask(data.interactions, "train")]
    np.testing.assert_array_equal(s.train.label[:n], (ratings >= 4).astype(np.float32))
    assert (s.train.label[n:] == 0).all()
    legacy = build_ml100k_ctr(hist_len=10, data=data, label="interaction")
    assert (legacy.train.label[:n] == 1).all()
    with pytest.raises(ValueError, match="label"):
        build_ml100k_ctr(hist_len=10, data=data, label="clicks")


def test_samples_subset_keeps_features_and_checks_lengths(stream):
    data, _, repo = stream
    s = attach_stream_features(build_ml100k_ctr(hist_len=10, data=data), repo).train
    sub = s.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.user_feats, s.user_feats[[2, 0]])
    np.testing.assert_array_equal(sub.item_feats, s.item_feats[[2, 0]])
    with pytest.raises(ValueError, match="user_feats"):
        Samples(s.store, s.user, s.item, s.ts_ms, s.end, s.hist_len, user_feats=s.user_feats[:1])


@pytest.mark.parametrize("protocol", ["standard", "strict_time"])
def test_test_cases_are_the_training_history_and_the_held_out_item(stream, protocol):
    data, _, _ = stream
    cases = ml100k_test_cases(data, protocol=protocol)
    r = build_ml100k_retrieval(hist_len=20, data=data, protocol=protocol)
    assert list(cases["user_id"]) == ["1", "2", "3", "4"]
    items = r.vocabs["item"]
    for k, row in cases.iterrows():
        test_k = int(np.flatnonzero(r.test.user == r.vocabs["user"].index(row["user_id"]))[0])
        assert items.index(row["test_item_id"]) == r.test.item[test_k] and row["test_ts_ms"] == r.test.ts_ms[test_k]
        hist = r.test.store.history(r.test.user[test_k], r.test.end[test_k])
        # standard: the whole training history; strict_time: except events in the test event's own
        # millisecond (its samples see "strictly before")
        same_ms = 0 if protocol == "standard" else sum(t == row["test_ts_ms"] for t in row["history_ts_ms"])
        assert items.encode(row["history"][: len(row["history"]) - same_ms]).tolist() == hist.tolist()
    streamed = with_streamed_test_history(r).test  # what a live service holds: the same-instant ones too
    for k, row in cases.iterrows():
        test_k = int(np.flatnonzero(streamed.user == r.vocabs["user"].index(row["user_id"]))[0])
        assert items.encode(row["history"]).tolist() == streamed.store.history(streamed.user[test_k], streamed.end[test_k]).tolist()
    if protocol == "standard":  # the offline test samples already hold what the service holds
        np.testing.assert_array_equal(streamed.end, r.test.end)
    else:
        assert (streamed.end >= r.test.end).all() and (streamed.end > r.test.end).any()
    # exactly the interactions a stream of split="train_valid" carries, in that order
    i = data.interactions[split_mask(data.interactions, "train_valid")]
    per_user = i.groupby("user_id", sort=False)["item_id"].apply(list)
    assert all(per_user[u] == h for u, h in zip(cases["user_id"], cases["history"]))


def test_ml100k_events_split_is_all_but_each_users_last(monkeypatch, stream):
    data, _, _ = stream
    monkeypatch.setattr("pipelines.data.movielens.load_ml100k", lambda cache_dir=None: data)
    train_valid = list(ml100k_events(split="train_valid"))
    test = list(ml100k_events(split="test"))
    assert len(train_valid) + len(test) == len(data.interactions) and len(test) == 4
    last = data.interactions.groupby("user_id").tail(1)
    assert {(e.user_id, e.item_id) for e in test} == set(zip(last["user_id"], last["item_id"]))
    assert [e.ts for e in train_valid] == sorted(e.ts for e in train_valid)
    assert len(list(ml100k_events(split="train_valid", limit=5))) == 5
    with pytest.raises(ValueError, match="split"):
        list(ml100k_events(split="nope"))


@pytest.mark.parametrize("model", ["ranker", "hcn", "hcn_user_only"])
def test_train_with_stream_features_and_manifest_names_them(stream, tmp_path, model):
    data, _, repo = stream
    user_only = model == "hcn_user_only"
    model = "hcn" if user_only else model
    base = build_ml100k_ctr(hist_len=10, data=data) if model == "ranker" else build_ml100k_retrieval(10, data)
    splits = attach_stream_features(base, repo)
    overrides = ({"dim": 16, "sdim": SdimConfig(dim=16), "long_len": 10, "short_len": 5, "mlp_hidden": (16,)}
                 if model == "ranker" else {"dim": 16, **({"n_item_feats": 0} if user_only else {})})
    job = TrainJob(model=model, data="ml100k", features="feast", model_overrides=overrides,
                   train=TrainConfig(epochs=1, batch_size=16, progress=False))
    result = run_job(job, splits=splits)
    assert result.model.config.n_user_feats == len(USER_VECTOR_NAMES)
    assert result.model.config.n_item_feats == (0 if user_only else len(ITEM_VECTOR_NAMES))
    path = save_job(job, result, version="v1", root=tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["user_vector_names"] == list(USER_VECTOR_NAMES)
    assert manifest["item_vector_names"] == ([] if user_only else list(ITEM_VECTOR_NAMES))
    assert manifest["feature_source"] == "feast_offline"
    assert manifest["extra"]["job"]["features"] == "feast"
    from pipelines.training.artifacts import load_artifact

    loaded, _ = load_artifact(model, "v1", tmp_path)
    assert loaded.config.n_user_feats == len(USER_VECTOR_NAMES)
    with pytest.raises(ValueError, match="ml100k"):
        TrainJob(model=model, data="synthetic", features="feast")
    with pytest.raises(ValueError, match="two_tower"):
        TrainJob(model="two_tower", data="ml100k", features="feast")


def test_cli_rejects_bad_feature_options():
    from typer.testing import CliRunner

    from pipelines.training.commands import app

    bad = CliRunner().invoke(app, ["train", "--model", "ranker", "--features", "feast", "--feature-sides", "users"])
    assert bad.exit_code != 0 and "feature-sides" in bad.output
    bad = CliRunner().invoke(app, ["train", "--model", "two_tower", "--features", "feast"])
    assert bad.exit_code != 0 and "two_tower" in bad.output
