"""The ML-100k leave-last-out protocols on a hand-made log with same-second ties.

File order (the .inter file as written below) decides the standard protocol's ties; strict_time
orders them by (user_id, item_id) as text, where "12" < "7" < "9" and "30" < "8".
"""

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.data import movielens
from pipelines.data.datasets import build_ml100k_retrieval, ml100k_test_cases
from pipelines.training.metrics import evaluate_retrieval

T0_S = 881_250_000  # ML-100k's era (events must be after 1990)
# user, item, seconds after T0_S, in file order: not time-sorted overall, ties at user 1's last second
# (items 9, 12, 7 in that order) and at user 2's last second (8, then 30)
LOG = [("1", "30", 200), ("2", "8", 250), ("1", "9", 300), ("1", "5", 100), ("2", "5", 150),
       ("1", "12", 300), ("2", "30", 250), ("1", "7", 300)]

# per protocol and user: (train items in order, valid item, test item, the test sample's history)
EXPECTED = {
    "standard": {"1": (["5", "30", "9"], "12", "7", ["5", "30", "9", "12"]),
                 "2": (["5"], "8", "30", ["5", "8"])},
    "strict_time": {"1": (["5", "30", "12"], "7", "9", ["5", "30"]),
                    "2": (["5"], "30", "8", ["5"])},
}


@pytest.fixture()
def data(tmp_path):
    """load_ml100k over a fake recbole wheel holding LOG, so the file order is the real input."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t4\t{T0_S + t}\n" for u, i, t in LOG)
    items = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tT{i}\t1995\tDrama\n" for i in ("5", "7", "8", "9", "12", "30"))
    users = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\tx\t1\n2\t30\tF\ty\t2\n"
    with zipfile.ZipFile(wheels / f"recbole-{movielens.RECBOLE_VERSION}-py3-none-any.whl", "w") as zf:
        for name, text in (("inter", inter), ("item", items), ("user", users)):
            zf.writestr(movielens._MEMBER_DIR + f"ml-100k.{name}", text)
    return movielens.load_ml100k(tmp_path)


def test_load_keeps_same_second_ties_in_file_order(data):
    inter = data.interactions
    assert list(zip(inter["user_id"], inter["item_id"])) == [
        ("1", "5"), ("2", "5"), ("1", "30"), ("2", "8"), ("2", "30"), ("1", "9"), ("1", "12"), ("1", "7")]


@pytest.mark.parametrize("protocol", ["standard", "strict_time"])
def test_split_and_histories(data, protocol):
    s = build_ml100k_retrieval(hist_len=10, data=data, protocol=protocol)
    items, users = s.vocabs["item"], s.vocabs["user"]

    def by_user(part):
        return {u: [items.tokens[i - 1] for i in part.item[part.user == users.index(u)]] for u in ("1", "2")}

    train, valid, test = by_user(s.train), by_user(s.valid), by_user(s.test)
    for u, (train_items, valid_item, test_item, test_history) in EXPECTED[protocol].items():
        assert train[u] == train_items and valid[u] == [valid_item] and test[u] == [test_item], u
        k = int(np.flatnonzero(s.test.user == users.index(u))[0])
        # the whole history (what evaluation masks), and what the model reads (right-aligned)
        assert [items.tokens[i - 1] for i in s.test.store.history(s.test.user[k], s.test.end[k])] == test_history
        hist = s.test.batch(np.array([k]))["hist"][0].numpy()
        assert [items.tokens[i - 1] for i in hist[hist > 0]] == test_history
    assert s.meta["protocol"] == protocol
    cases = ml100k_test_cases(data, protocol=protocol).set_index("user_id")
    for u, (train_items, valid_item, test_item, _) in EXPECTED[protocol].items():
        assert cases.loc[u, "test_item_id"] == test_item and cases.loc[u, "history"] == train_items + [valid_item]


def test_the_stream_carries_the_standard_split(data, monkeypatch):
    monkeypatch.setattr("pipelines.data.movielens.load_ml100k", lambda cache_dir=None: data)
    test = {(e.user_id, e.item_id) for e in movielens.ml100k_events(split="test")}
    assert test == {(u, v[2]) for u, v in EXPECTED["standard"].items()}


class _ScoreTable(nn.Module):
    """A fixed score per (user row, item row): a stand-in model for checking what evaluation masks."""

    def __init__(self, scores: np.ndarray):
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score_catalogue(self, batch, items):
        return self.scores[batch["user"]][:, items]  # (B, N)


@pytest.mark.parametrize("protocol, test_recall, valid_recall", [("standard", 1.0, 1.0), ("strict_time", 0.0, 0.5)])
def test_evaluation_masks_the_users_train_and_valid_items(data, protocol, test_recall, valid_recall):
    """Every other item a user rated outscores the target. Standard masks all of the user's train
    (+ valid, for a test target) items, so the target comes first; strict_time keeps same-second
    ones in the ranking (test: user 1's 9 and 12, user 2's 30; valid: user 1's 12)."""
    s = build_ml100k_retrieval(hist_len=10, data=data, protocol=protocol)
    items, users = s.vocabs["item"], s.vocabs["user"]
    scores = np.zeros((users.size, items.size))
    for u, i in zip(data.interactions["user_id"], data.interactions["item_id"]):
        scores[users.index(u), items.index(i)] = 2.0
    scores[s.test.user, s.test.item] = 1.0
    assert evaluate_retrieval(_ScoreTable(scores), s.test, s.catalogue, ks=(1,))["recall_at_1"] == test_recall
    scores[s.valid.user, s.valid.item] = 1.5
    assert evaluate_retrieval(_ScoreTable(scores), s.valid, s.catalogue, ks=(1,))["recall_at_1"] == valid_recall
    # ranking a validation target never masks the later test item
    scores[s.test.user, s.test.item] = 3.0
    assert evaluate_retrieval(_ScoreTable(scores), s.valid, s.catalogue, ks=(1,))["recall_at_1"] == 0.0
