"""The cascade benchmark (benchmarks/cascade_ml100k.py) is a thin caller of the library's
training: `run` takes seeds run earlier with the same settings (and only those) and writes the
report with its goals table. The training helpers are tested in tests/unit/pipelines/test_cascade.py."""

import dataclasses
import json

import pytest

from benchmarks.cascade_ml100k import run
from pipelines.training.cascade import CascadeConfig

PREFIXES = ("two_tower_only", "two_tower_hcn", "two_tower_ranker", "ranker_alone", "cascade")


def _result(cascade_recall: float) -> dict[str, float]:
    r = {"retrieval_recall_at_1000": 0.97, "coarse_recall_at_200": 0.77, "fusion_retrieval_weight": 1.0,
         "fusion_coarse_weight": 0.5, "fusion_ranker_weight": 1.0, "train_cpu_seconds_total": 250.0,
         "train_seconds_total": 400.0, "seconds_total": 420.0, "cpu_seconds_total": 270.0}
    for split in ("", "valid_"):
        r[f"{split}coarse_recall_at_200"] = 0.77
        for prefix in PREFIXES:
            r[f"{split}{prefix}_recall_at_20"], r[f"{split}{prefix}_ndcg_at_20"] = 0.26, 0.11
        r[f"{split}cascade_recall_at_20"] = cascade_recall
    return r


def test_run_reuses_matching_seeds_and_reports_the_goals(tmp_path, monkeypatch):
    cfg = CascadeConfig()
    runs = tmp_path / "cascade_runs"
    runs.mkdir()
    settings = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for seed, rec in ((0, 0.31), (1, 0.29)):
        (runs / f"seed{seed}.json").write_text(json.dumps({"settings": settings, "result": _result(rec)}))
    summary = run([0, 1], cfg, tmp_path, reuse=True)
    assert summary["cascade_recall_at_20_ml100k"] == pytest.approx(0.30)
    assert summary["cascade_ge_two_tower_every_seed"] == 1.0
    md = (tmp_path / "cascade.md").read_text()
    assert "| cascade Recall@20 ≥ 0.30 (mean) | 0.3000 | yes |" in md
    assert "train_cpu_seconds_total) | 250 s | yes |" in md
    # a seed run with other settings is not reused (it would be trained: refuse that here)
    (runs / "seed0.json").write_text(json.dumps({"settings": {**settings, "k": 10}, "result": _result(0.31)}))
    def no_training(seed, cfg, progress=False):
        raise RuntimeError(f"seed {seed} would be trained")

    monkeypatch.setattr("benchmarks.cascade_ml100k.run_seed", no_training)
    with pytest.raises(RuntimeError, match="seed 0 would be trained"):
        run([0], cfg, tmp_path, reuse=True)
