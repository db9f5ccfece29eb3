"""The shared loop (early stopping, checkpoint/resume) and the CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from models import build_model
from pipelines.data.datasets import build_synthetic_retrieval
from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.commands import app
from pipelines.training.loop import TrainConfig, fit

torch.set_num_threads(1)
TINY = SyntheticConfig(n_users=30, n_items=40, n_categories=5, n_interests=2, n_short_interests=1, seq_len=30,
                       short_len=10, n_impressions=4, seed=4)


def _pop():
    s = build_synthetic_retrieval(TINY, hist_len=10)
    return build_model("popularity", {"n_items": s.vocabs["item"].size}), s.train


def test_early_stopping_restores_best_epoch():
    model, train = _pop()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at epoch 2, then two bad epochs
    result = fit(model, train, TrainConfig(epochs=5, patience_epochs=2, progress=False),
                 evaluate=lambda m: {"auc": next(scores), "logit0": float(m.logit.detach()[1])}, monitor="auc", mode="max")
    assert result.best_epoch == 2 and result.stopped_early and len(result.history) == 4
    assert float(model.logit.detach()[1]) == result.best_metrics["logit0"]  # weights of epoch 2 restored


def test_checkpoint_resume(tmp_path):
    model, train = _pop()
    fit(model, train, TrainConfig(epochs=1, progress=False, checkpoint_dir=str(tmp_path), patience_epochs=5))
    model2, _ = _pop()
    r = fit(model2, train, TrainConfig(epochs=2, progress=False, checkpoint_dir=str(tmp_path), patience_epochs=5))
    assert [h["epoch"] for h in r.history] == [1, 2]  # epoch 1 came from the checkpoint


def test_cli_train_then_evaluate(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--model", "din_last50", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
                              "--synthetic-users", "80", "--synthetic-seq-len", "60", "--synthetic-items", "60",
                              "--threads", "1", "--no-progress", "--version", "t1", "--artifacts-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "models" / "din_last50" / "t1" / "manifest.json").exists()
    res = runner.invoke(app, ["evaluate", "--name", "din_last50", "--artifacts-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    # evaluate rebuilt the data from the manifest and loaded the saved weights: the same test
    # metrics as training measured (that the model learns is tests/unit/models/test_smoke.py's job)
    manifest = json.loads((tmp_path / "models" / "din_last50" / "t1" / "manifest.json").read_text())
    for name in ("auc", "gauc", "logloss"):
        assert out[name] == pytest.approx(manifest["metrics"]["test"][name], rel=1e-6), name
    bad = runner.invoke(app, ["train", "--model", "nope"])
    assert bad.exit_code != 0
