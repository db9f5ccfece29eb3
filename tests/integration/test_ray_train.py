"""Ray Train wrapper: the same training job on 2 data-parallel workers, on the session's Ray."""

import numpy as np
import pytest

from pipelines.data.synthetic import SyntheticConfig
from pipelines.training.jobs import TrainJob
from pipelines.training.loop import TrainConfig

pytestmark = pytest.mark.integration


def test_two_workers_train_and_return_the_model(tmp_path, ray_serve):
    from pipelines.training.distributed import fit_distributed

    job = TrainJob(model="din_last50", data="synthetic", model_overrides={"use_user_id": False},
                   synthetic=SyntheticConfig(n_users=80, n_items=60, seq_len=60, n_impressions=6),
                   train=TrainConfig(epochs=2, batch_size=64, num_threads=1, progress=False))
    result = fit_distributed(job, num_workers=2, storage_path=str(tmp_path), cpus_per_worker=0.5)
    assert len(result.fit.history) >= 1 and 0.0 <= result.test_metrics["auc"] <= 1.0
    assert np.isfinite(result.test_metrics["logloss"])
    # every epoch of the distributed run recorded a finite training loss
    assert all(np.isfinite(h["train_loss"]) for h in result.fit.history)
