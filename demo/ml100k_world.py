"""MovieLens-100k through the whole platform, for the "no skew between offline and online" check.

`stream_and_train` does what a user of the platform does with a dataset: produce exactly the
training interactions (train + valid of the leave-last-out split) to Kafka; the popularity and
feature-writer processors apply them (Feast offline history on); train the cascade (two-tower,
HCN on the two-tower's candidates, listwise ranker, fusion weights) on the splits joined with the
Feast offline store; then the bse-encoder builds the ranker version's SDIM tables from the same
topic.

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


def cascade_splits(s: Settings):
    """ML-100k's retrieval splits (standard protocol) joined point-in-time with what the stream
    wrote to the Feast offline store: what the cascade trains on (HCN's job names that data)."""
    from features.feast_repo import repo_for_settings
    from pipelines.training.defaults import default_job
    from pipelines.training.jobs import load_splits

    return load_splits(default_job("hcn", "ml100k", features="feast"), repo_for_settings(s))


def train_cascade_models(s: Settings, root: Path, version: str = VERSION, overrides: tuple[str, ...] = (), seed: int = 0,
                         progress: Callable[[str], None] = print) -> tuple[dict[str, float], float]:
    """The three stages trained as one cascade (pipelines/training/cascade.py) on the ML-100k
    splits joined with what the stream wrote to the Feast offline store, saved as `version`, and
    marked latest only when no shorter cascade beats it on validation (the promotion guard: a
    refusal is reported, and the versions stay usable by name). Returns (seconds, two-tower test
    Recall@20)."""
    from pipelines.training.cascade import PromotionRefused, config_from_overrides, evaluate_cascade, save_cascade, train_cascade

    t = time.perf_counter()
    splits = cascade_splits(s)
    result = train_cascade(splits, config_from_overrides(list(overrides)), seed)
    try:
        save_cascade(result, splits, version, root)
    except PromotionRefused as e:
        progress(f"cascade {version} saved but not marked latest: {e}")
    test = evaluate_cascade(result, None, splits, "test")
    seconds = {"train_cascade": time.perf_counter() - t}
    progress(f"trained the cascade {version} in {seconds['train_cascade']:.0f}s: test Recall@20 two-tower "
             f"{test['two_tower_only_recall_at_20']:.4f}, two-tower->HCN {test['two_tower_hcn_recall_at_20']:.4f}, "
             f"cascade {test['cascade_recall_at_20']:.4f}; fusion {result.fusion.weights()}")
    return seconds, test["two_tower_only_recall_at_20"]


def build_bse(s: Settings, root: Path, version: str = VERSION, progress: Callable[[str], None] = print) -> float:
    """The ranker version's SDIM tables: a bse-encoder applies what the events topic holds beyond
    the stored offsets (the sequences, and this version's tables for those events), then `bse
    rebuild` computes the version's tables from the stored sequences. The rebuild is what a second
    version needs: the encoder's offsets are shared, so over a topic an earlier version's encoder
    already consumed it applies nothing, and the new version would serve empty tables (silently:
    the store cannot tell a missing table from an empty one). Returns seconds."""
    t = time.perf_counter()
    env = {**os.environ, **s.to_env(), "RECSTREAM_ARTIFACTS_DIR": str(root)}
    spec = f"artifact:ranker/{version}"
    _wait([_process(s, {"RECSTREAM_ARTIFACTS_DIR": str(root)}, "bse-encoder", "--embeddings", spec, "--model-version", version)])
    done = subprocess.run([sys.executable, "-m", "cli", "bse", "rebuild", "--model-version", version, "--embeddings", spec],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"bse rebuild {version} failed (rc={done.returncode}): {done.stdout.decode()[-3000:]}")
    seconds = time.perf_counter() - t
    progress(f"bse-encoder and rebuild made the tables of ranker/{version} in {seconds:.0f}s")
    return seconds


def stream_and_train(s: Settings, root: Path, overrides: tuple[str, ...] = (),
                     progress: Callable[[str], None] = print) -> Ml100kWorld:
    from pipelines.data.datasets import ml100k_test_cases

    seconds = {"stream": stream_ml100k(s, root, progress=progress)}
    train_s, recall_tt = train_cascade_models(s, root, VERSION, overrides, progress=progress)
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
