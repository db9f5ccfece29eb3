"""Small serving artefacts for tests: the three stage models, randomly initialised (or briefly
trained by the caller), saved through the model store exactly as training saves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from features.model_store import save_artifact
from models import HCN, CtrRanker, HcnConfig, RankerConfig, SdimConfig, TwoTower, TwoTowerConfig
from models.layers import Vocab


def vocabs(n_users: int, n_items: int, n_cats: int = 4) -> dict[str, Vocab]:
    return {"user": Vocab("user", [f"u{i}" for i in range(n_users)]),
            "item": Vocab("item", [f"i{i}" for i in range(n_items)]),
            "item_cat": Vocab("item_cat", [f"c{i}" for i in range(n_cats)])}


def save_stage_models(root: Path, n_users: int = 50, n_items: int = 300, dim: int = 16, seed: int = 0,
                      version: str = "v1", ranker_overrides: dict | None = None,
                      hcn_overrides: dict | None = None, feature_vectors: dict | None = None) -> dict[str, str]:
    """Saves two_tower, hcn and ranker version `version` under root; returns {name: version}."""
    torch.manual_seed(seed)
    voc = vocabs(n_users, n_items)
    dims = dict(n_users=voc["user"].size, n_items=voc["item"].size, n_item_cats=voc["item_cat"].size, dim=dim)
    item_cat = torch.as_tensor(np.r_[0, np.arange(n_items) % 4 + 1, np.zeros(voc["item"].n_oov_buckets)], dtype=torch.long)
    models = {
        "two_tower": TwoTower(TwoTowerConfig(**dims, hidden=(32,), hist_len=20)),
        "hcn": HCN(HcnConfig(**dims, long_len=30, short_len=10, n_iters=1, **(hcn_overrides or {}))),
        "ranker": CtrRanker(RankerConfig(**dims, long_len=100, short_len=20, din_hidden=(16,), mlp_hidden=(32,),
                                         sdim=SdimConfig(dim=dim, n_hashes=12, tau=3), **(ranker_overrides or {}))),
    }
    for name, model in models.items():
        model.set_item_categories(item_cat)
        model.eval()
        uses = getattr(model.config, "n_user_feats", 0) or getattr(model.config, "n_item_feats", 0)
        save_artifact(name, version, model, model.config, voc, {}, {"test": True}, root=root,
                      feature_vectors=feature_vectors if uses else None)
    return {name: version for name in models}
