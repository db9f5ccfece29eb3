"""Every registered model trains one epoch on tiny data with the shared loop, and its loss falls."""

import numpy as np
import pytest
import torch

from models import MODELS, build_model
from models.sdim_hash import SdimConfig
from pipelines.data.datasets import build_synthetic_ctr, build_synthetic_retrieval
from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.loop import TrainConfig, fit

torch.set_num_threads(1)

TINY = SyntheticConfig(n_users=150, n_items=60, n_categories=6, n_interests=2, n_short_interests=1, seq_len=40,
                       short_len=10, n_impressions=6, seed=3)


def _mean_loss(model, samples, batch_size=64):
    model.eval()
    with torch.no_grad():
        return float(np.mean([model(b)["loss"].item() for b in samples.batches(batch_size)]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_one_epoch_and_loss_falls(name, tmp_path):
    task = MODELS[name].task
    splits = build_synthetic_ctr(TINY) if task == "ranking" else build_synthetic_retrieval(TINY, hist_len=40)
    train = splits.train if task == "ranking" else splits.train.subset(np.arange(0, len(splits.train), 3))
    dims = splits.model_dims()
    cfg = {"popularity": {"n_items": dims["n_items"]},
           "two_tower": {**dims, "dim": 16, "hist_len": 20},
           "hcn": {**dims, "dim": 16, "long_len": 40, "short_len": 10, "long_levels": (2, 4)}}.get(
        name, {**dims, "dim": 16, "sdim": SdimConfig(dim=16), "long_len": 40, "short_len": 10, "mlp_hidden": (32,)})
    torch.manual_seed(0)
    model = build_model(name, cfg)
    if hasattr(model, "set_item_categories"):
        model.set_item_categories(splits.item_cat)
    before = _mean_loss(model, train)
    result = fit(model, train, TrainConfig(epochs=1, batch_size=64, lr=1e-2, progress=False, checkpoint_dir=str(tmp_path)))
    after = _mean_loss(model, train)
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before - 0.01, f"{name}: loss {before:.4f} -> {after:.4f}"
    assert result.best_epoch == 1 and (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
