"""The bse-encoder reads the deployed ranker's item table with the ranker's own id mapping."""

import numpy as np
import torch

from models import build_model
from models.layers import Vocab
from models.sdim_hash import SdimConfig
from pipelines.stream.bse_encoder import load_item_embeddings
from pipelines.training.artifacts import save_artifact

torch.set_num_threads(1)


def test_artifact_spec_maps_known_and_unknown_ids_like_the_ranker(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSTREAM_ARTIFACTS_DIR", str(tmp_path))
    torch.manual_seed(0)
    m = build_model("ranker", {"n_users": 5, "n_items": 9, "n_item_cats": 3, "dim": 8, "sdim": SdimConfig(dim=8),
                               "long_len": 10, "short_len": 4})
    m.set_item_categories(torch.tensor([0, 1, 1, 2, 2, 1, 1, 2, 0]))
    vocab = Vocab("item", [f"i{k}" for k in range(6)], 2)
    save_artifact("ranker", "v1", m, m.config, {"user": Vocab("user", ["a"], 2), "item": vocab}, {}, {})

    emb = load_item_embeddings("artifact:ranker/v1")
    table = m.item_embedding_table()  # (9, 8): padding, 6 known, 2 OOV rows
    ids = ["i0", "i5", "never-seen-1", "never-seen-2"]
    np.testing.assert_allclose(emb.lookup(ids), table[vocab.encode(ids)], rtol=1e-6)
    assert emb.dim == 8
    assert np.abs(table[1:]).max() == emb.max_abs  # quantisation bound covers the OOV rows too


def test_table_version_of_an_artifact_uses_the_rankers_own_hasher(tmp_path, monkeypatch):
    """A ranker trained with a non-default SDIM hasher (12 hashes here, 48 by default): the
    bse-encoder and `bse rebuild` must write its tables under the name serving looks up (the
    ranker config's hasher, services/runtime.py), not under the default hasher's."""
    from features.bse import TableVersion
    import json

    from features.model_store import artifact_path
    from models.sdim_hash import SdimHasher
    from pipelines.stream.bse_encoder import load_table_version
    from services.runtime import _sdim

    monkeypatch.setenv("RECSTREAM_ARTIFACTS_DIR", str(tmp_path))
    torch.manual_seed(0)
    sdim = SdimConfig(dim=8, n_hashes=12, tau=3, seed=5)
    m = build_model("ranker", {"n_users": 5, "n_items": 9, "n_item_cats": 3, "dim": 8, "sdim": sdim,
                               "long_len": 10, "short_len": 4})
    vocab = Vocab("item", [f"i{k}" for k in range(6)], 2)
    save_artifact("ranker", "v1", m, m.config, {"user": Vocab("user", ["a"], 2), "item": vocab}, {}, {})

    tv = load_table_version("artifact:ranker/v1", "v1")
    assert tv.hasher.config == sdim
    config = json.loads((artifact_path("ranker", "v1") / "manifest.json").read_text())["config"]
    served = TableVersion(SdimHasher(_sdim(config)), model_version="v1")
    assert tv.name == served.name
    assert load_table_version("random:50:0:8", "v1").hasher.config == SdimConfig(dim=8)  # no ranker: the default
