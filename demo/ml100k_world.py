"""MovieLens-100k through the whole platform, for the "no skew between offline and online" check.

`stream_and_train` does what a user of the platform does with a dataset: produce exactly the
training interactions (train + valid of the leave-last-out split) to Kafka; the popularity and
feature-writer processors apply them (Feast offline history on); train the two-tower, and HCN
and the ranker on features joined point-in-time from the Feast offline store; then the
bse-encoder builds the ranker version's SDIM tables from the same topic.

`offline_inputs` builds, without reading anything the serving path reads (no Redis keys, no
Feast online store), what an offline evaluation of the same artefacts feeds the same request
path: histories from the dataset, features from the Feast offline store's point-in-time join
at the moment the online requests are made (after the last training interaction), SDIM tables
from an in-memory BSE over the dataset histories, popularity from counts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from recstream.settings import Settings

log = logging.getLogger(__name__)

VERSION = "ml100k"


@dataclass
class Ml100kWorld:
    root: Path  # artefacts root
    versions: dict[str, str]  # artefact name -> version
    cases: object  # pipelines.data.datasets.ml100k_test_cases() frame
    seconds: dict[str, float]
    offline_recall_two_tower: float


def _process(s: Settings, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "process", *args, "--max-idle-s", "5"],
                            env={**os.environ, **s.to_env(), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], timeout_s: float = 1800) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"processor {p.args[4]} failed (rc={p.returncode}): {out.decode()[-3000:]}")


def stream_ml100k(s: Settings, root: Path, split: str = "train_valid", produce: bool = True,
                  progress: Callable[[str], None] = print, events=None) -> float:
    """Produce the split's interactions (or `events`; nothing when `produce` is false: already in
    the topic) and let the popularity and feature-writer processors (offline history on) apply
    them; returns seconds."""
    from features.feast_repo import repo_for_settings
    from pipelines.data.movielens import ml100k_events
    from pipelines.produce import produce_events

    t = time.perf_counter()
    n = produce_events(events if events is not None else ml100k_events(split=split), s, progress=False) if produce else 0
    repo_for_settings(s)  # applied before the writer publishes to it
    env = {"RECSTREAM_ARTIFACTS_DIR": str(root)}
    _wait([_process(s, env, "popularity"), _process(s, env, "feature-writer", "--offline-history")])
    seconds = time.perf_counter() - t
    progress(f"popularity + feature-writer applied {n or 'the'} ML-100k interactions in {seconds:.0f}s")
    return seconds


def train_stage_models(s: Settings, root: Path, version: str = VERSION, epochs: int = 10,
                       progress: Callable[[str], None] = print, models: tuple[str, ...] = ("two_tower", "hcn", "ranker"),
                       ranker_overrides: dict | None = None) -> tuple[dict[str, float], float]:
    """Two-tower on ids and sequences; the ranker also on the stream's user and item features and
    HCN on its user features, joined point-in-time from the Feast offline store. Returns (seconds
    per model, two-tower test Recall@20)."""
    from features.feast_repo import repo_for_settings
    from pipelines.training.defaults import default_job
    from pipelines.training.jobs import load_splits, run_job, save_job
    from pipelines.training.metrics import evaluate_retrieval

    repo = repo_for_settings(s)
    seconds: dict[str, float] = {}
    recall_tt = float("nan")
    for model, features in (("two_tower", "none"), ("hcn", "feast"), ("ranker", "feast")):
        if model not in models:
            continue
        t = time.perf_counter()
        # HCN takes the user features only: with item features as of the end of the data it ranked
        # worse on ML-100k (test Recall@20 0.13 against 0.22 with user features only; see README)
        overrides = {"use_user_id": True, **(ranker_overrides or {})} if model == "ranker" else \
            {"n_item_feats": 0} if model == "hcn" else {}
        # the same defaults as `recstream train` (pipelines/training/defaults.py), `epochs` as a cap
        job = default_job(model, "ml100k", epochs, overrides, {"seed": 0, "progress": False}, features=features)
        splits = load_splits(job, repo)
        result = run_job(job, splits=splits)
        save_job(job, result, version=version, root=root)
        seconds[f"train_{model}"] = time.perf_counter() - t
        if model == "two_tower":
            recall_tt = evaluate_retrieval(result.model, splits.test, splits.catalogue, (20,))["recall_at_20"]
        progress(f"trained {model} in {seconds[f'train_{model}']:.0f}s: test {result.test_metrics}")
    return seconds, recall_tt


def build_bse(s: Settings, root: Path, version: str = VERSION, progress: Callable[[str], None] = print) -> float:
    """The ranker version's SDIM tables, by a bse-encoder over the events topic; returns seconds."""
    t = time.perf_counter()
    env = {"RECSTREAM_ARTIFACTS_DIR": str(root)}
    _wait([_process(s, env, "bse-encoder", "--embeddings", f"artifact:ranker/{version}", "--model-version", version)])
    seconds = time.perf_counter() - t
    progress(f"bse-encoder built the tables of ranker/{version} in {seconds:.0f}s")
    return seconds


def stream_and_train(s: Settings, root: Path, epochs: int = 10, progress: Callable[[str], None] = print) -> Ml100kWorld:
    from pipelines.data.datasets import ml100k_test_cases

    seconds = {"stream": stream_ml100k(s, root, progress=progress)}
    train_s, recall_tt = train_stage_models(s, root, VERSION, epochs, progress)
    seconds.update(train_s)
    seconds["bse"] = build_bse(s, root, VERSION, progress)
    return Ml100kWorld(root, {m: VERSION for m in ("two_tower", "hcn", "ranker")}, ml100k_test_cases(), seconds, recall_tt)


@dataclass
class OfflineInputs:
    """Plain data for services.inputs.InMemoryInputs and a popularity list."""

    histories: dict[str, list[str]]
    user_rows: dict[str, dict]
    item_rows: dict[str, np.ndarray]
    tables: dict[tuple[str, str], np.ndarray]
    popular: list[tuple[str, float]]


def offline_inputs(s: Settings, world: Ml100kWorld) -> OfflineInputs:
    from features.bse import Behaviour, InMemoryBseStore, TableVersion
    from features.bse.embeddings import VocabItemEmbeddings
    from features.feast_repo import repo_for_settings
    from features.model_store import load_artifact, load_item_embeddings
    from features.vectors import USER_RAW_NAMES
    from models.sdim_hash import SdimHasher
    from pipelines.data.stream_features import join_raw

    cases = world.cases
    histories = {u: list(h) for u, h in zip(cases["user_id"], cases["history"])}
    t_online = max(max(h) for h in cases["history_ts_ms"] if h) + 1  # the requests come after the last event
    repo = repo_for_settings(s)
    users = np.asarray(list(histories), dtype=object)
    user_raw = join_raw(repo, "user", users, np.full(len(users), t_online))
    user_rows = {u: dict(zip(USER_RAW_NAMES, map(float, row))) for u, row in zip(users, user_raw) if not np.isnan(row).all()}
    items = np.asarray(sorted({i for h in histories.values() for i in h}), dtype=object)
    item_raw = join_raw(repo, "item", items, np.full(len(items), t_online))
    item_rows = {i: row for i, row in zip(items, item_raw) if not np.isnan(row).all()}

    ranker, _ = load_artifact("ranker", world.versions["ranker"], world.root)
    table, vocab, _ = load_item_embeddings("ranker", world.versions["ranker"], world.root)
    tv = TableVersion(SdimHasher(ranker.config.sdim), VocabItemEmbeddings(table, vocab),
                      model_version=world.versions["ranker"])
    bse = InMemoryBseStore(versions=[tv])
    bse.apply_batch([Behaviour(u, i) for u, h in histories.items() for i in h])
    tab = bse.tables(list(histories), tv)
    tables = {(u, world.versions["ranker"]): tab[k] for k, u in enumerate(histories)}

    counts = Counter(i for h in histories.values() for i in h)  # every rating weighs 1.0 in the popularity processor
    popular = sorted(((i, float(c)) for i, c in counts.items()), key=lambda p: (p[1], p[0]), reverse=True)  # ZREVRANGE order
    return OfflineInputs(histories, user_rows, item_rows, tables, popular)
