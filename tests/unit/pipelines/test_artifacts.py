"""Artefacts: save / load round trip, latest version, env override, BSE item embeddings."""

import json

import numpy as np
import pytest
import torch

from models import build_model
from models.layers import Vocab
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines.training.artifacts import (
    ArtifactNotFound,
    list_versions,
    load_artifact,
    load_item_embeddings,
    load_vocabs,
    save_artifact,
)

torch.set_num_threads(1)


def _ranker():
    torch.manual_seed(0)
    m = build_model("ranker", {"n_users": 5, "n_items": 9, "n_item_cats": 3, "dim": 8, "sdim": SdimConfig(dim=8),
                               "long_len": 10, "short_len": 4})
    m.set_item_categories(torch.tensor([0, 1, 1, 2, 2, 1, 1, 2, 0]))
    return m


VOCAB = {"user": Vocab("user", ["a", "b"], 2), "item": Vocab("item", [f"i{k}" for k in range(6)], 2)}


def test_round_trip_and_latest(tmp_path):
    m = _ranker()
    window = {"train": {"start_ts_ms": 1, "end_ts_ms": 2}}
    p1 = save_artifact("ranker", "v1", m, m.config, VOCAB, {"auc": 0.7}, window, root=tmp_path)
    assert p1 == tmp_path / "models" / "ranker" / "v1"
    manifest = json.loads((p1 / "manifest.json").read_text())
    assert manifest["model"] == "ranker" and manifest["metrics"] == {"auc": 0.7} and manifest["data_window"] == window
    assert manifest["config"]["sdim"]["dim"] == 8 and "commit" in manifest["code_revision"]
    assert manifest["sdim_hasher_version"] == SdimHasher(SdimConfig(dim=8)).version
    m2 = build_model("full_attention", {**{k: v for k, v in m.config.__dict__.items() if k not in ("long_term",)}})
    save_artifact("ranker", "v2", m2, m2.config, VOCAB, {}, window, root=tmp_path)
    assert list_versions("ranker", tmp_path) == ["v1", "v2"]
    latest, man = load_artifact("ranker", root=tmp_path)
    assert man["version"] == "v2" and latest.config.long_term == "attention"
    loaded, _ = load_artifact("ranker", "v1", root=tmp_path)
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4]), "hist": torch.randint(0, 9, (2, 10))}
    m.eval()
    torch.testing.assert_close(loaded(batch)["logit"], m(batch)["logit"])
    assert load_vocabs("ranker", "v1", tmp_path)["item"].index("i3") == 4
    with pytest.raises(FileExistsError):
        save_artifact("ranker", "v1", m, m.config, VOCAB, {}, window, root=tmp_path)


def test_item_embeddings_for_the_bse(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSTREAM_ARTIFACTS_DIR", str(tmp_path))
    m = _ranker()
    save_artifact("ranker", "v1", m, m.config, VOCAB, {}, {})
    emb, vocab, hasher_version = load_item_embeddings("ranker")
    assert emb.shape == (9, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, m.item_embedding_table())
    # the table is id + category embedding: two items of one category differ only by their id rows
    np.testing.assert_allclose(emb[3], (m.item_emb.weight[3] + m.cat_emb.weight[2]).detach().numpy(), rtol=1e-6)
    assert vocab.index("i0") == 1 and hasher_version.startswith("d8-")


def test_missing_artifact_names_itself(tmp_path):
    with pytest.raises(ArtifactNotFound, match="'nope'"):
        load_artifact("nope", root=tmp_path)


def test_vocab_oov_buckets_are_stable():
    v = Vocab.build("item", ["x", "y", "x"], n_oov_buckets=4)
    assert len(v) == 2 and v.size == 1 + 2 + 4
    assert v.index("x") == 1 and v.index("y") == 2
    unk = v.index("never-seen")
    assert 3 <= unk < 7 and unk == Vocab.from_dict(v.to_dict()).index("never-seen")


def test_promotion_pointer_decides_latest(tmp_path):
    """Without LATEST the newest version is latest (old artefact dirs); promote() pins one, even an
    older one, and refuses a version that was never saved."""
    from features.model_store import ArtifactNotFound, latest_version, promote, promoted_version

    m = _ranker()
    window = {"train": {}}
    save_artifact("ranker", "v1", m, m.config, VOCAB, {}, window, root=tmp_path)
    save_artifact("ranker", "v2", m, m.config, VOCAB, {}, window, root=tmp_path)
    assert promoted_version("ranker", tmp_path) is None and latest_version("ranker", tmp_path) == "v2"
    promote("ranker", "v1", tmp_path)
    assert latest_version("ranker", tmp_path) == "v1"
    assert load_artifact("ranker", root=tmp_path)[1]["version"] == "v1"
    save_artifact("ranker", "v3", m, m.config, VOCAB, {}, window, root=tmp_path)  # saved, not promoted
    assert latest_version("ranker", tmp_path) == "v1" and list_versions("ranker", tmp_path) == ["v1", "v2", "v3"]
    with pytest.raises(ArtifactNotFound, match="v9"):
        promote("ranker", "v9", tmp_path)
    assert latest_version("ranker", tmp_path) == "v1"
