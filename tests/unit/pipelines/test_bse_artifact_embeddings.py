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
