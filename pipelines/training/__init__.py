"""Training: one loop for every model, a Ray Train wrapper, artefacts, metrics and the CLI.

Public surface:
- `fit`, `TrainConfig`, `FitResult` (loop.py): fit / evaluate / checkpoint / early stopping;
- `TrainJob`, `run_job` (jobs.py) and `fit_distributed` (distributed.py): one job, one or many workers;
- `save_artifact`, `load_artifact`, `load_item_embeddings` (artifacts.py);
- metrics.py: Recall@K / NDCG@K, AUC / GAUC / logloss;
- commands.py: the `train`, `evaluate`, `bench` typer app.
"""

from pipelines.training.artifacts import load_artifact, load_item_embeddings, load_vocabs, save_artifact
from pipelines.training.jobs import TrainJob, run_job
from pipelines.training.loop import FitResult, TrainConfig, fit

__all__ = ["fit", "TrainConfig", "FitResult", "TrainJob", "run_job", "save_artifact", "load_artifact",
           "load_item_embeddings", "load_vocabs"]
