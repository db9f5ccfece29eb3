"""Ray Train wrapper: the same training job on 2 data-parallel workers, on the session's Ray. Both
workers must have trained (each on its own half of the samples, ending with the same weights,
which moved from the initial ones), the model must have learned (planted data: test AUC well
above chance), and the result must save and load back to the same scores."""

import numpy as np
import pytest
import torch

from models.sdim_hash import SdimConfig
from pipelines.training.jobs import TrainJob, save_job
from pipelines.training.loop import TrainConfig
from pipelines.training.metrics import predict_ranking
from tests.builders import planted_synthetic

pytestmark = pytest.mark.integration


def test_two_workers_train_and_the_saved_model_loads(tmp_path, ray_serve):
    from pipelines.training.artifacts import load_artifact
    from pipelines.training.distributed import fit_distributed

    job = TrainJob(model="ranker", data="synthetic", model_overrides={"use_user_id": False, "dim": 16, "short_len": 10,
                                                                 "sdim": SdimConfig(dim=16), "mlp_hidden": (32,)},
                   synthetic=planted_synthetic(), train=TrainConfig(epochs=3, batch_size=32, lr=1e-2, num_threads=1,
                                                                    progress=False))
    result = fit_distributed(job, num_workers=2, storage_path=str(tmp_path / "ray"), cpus_per_worker=0.5)

    workers = result.workers
    assert [w["rank"] for w in workers] == [0, 1]
    assert sum(w["n_train"] for w in workers) == len(result.splits.train) and min(w["n_train"] for w in workers) > 0
    for w in workers:
        assert len(w["train_loss"]) == len(result.fit.history) and all(np.isfinite(w["train_loss"]))
        assert w["final_digest"] != w["initial_digest"], f"worker {w['rank']} did not move its weights"
    assert workers[0]["final_digest"] == workers[1]["final_digest"]  # gradients were averaged across the two
    assert workers[0]["train_loss"] != workers[1]["train_loss"]  # each computed on its own shard
    assert result.test_metrics["auc"] >= 0.75, result.test_metrics  # chance is 0.5 (tests/unit/models/test_smoke.py)

    path = save_job(job, result, version="ray2", root=tmp_path / "artifacts")
    loaded, _ = load_artifact("ranker", "ray2", tmp_path / "artifacts")
    with torch.no_grad():
        np.testing.assert_array_equal(predict_ranking(loaded, result.splits.test), predict_ranking(result.model, result.splits.test))
    assert (path / "manifest.json").exists()
