"""`recstream bse rebuild|stats` against an injected in-memory store."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from features.bse import Behaviour, InMemoryBseStore, TableVersion
from models.sdim_hash import SdimConfig, SdimHasher
from pipelines import bse_commands
from pipelines.stream.bse_encoder import load_item_embeddings

SPEC = "random:400:3:16"


@pytest.fixture
def store():
    emb = load_item_embeddings(SPEC)
    s = InMemoryBseStore([TableVersion(SdimHasher(SdimConfig(dim=16)), emb, model_version="v1")], max_seq_len=30)
    rng = np.random.default_rng(0)
    s.apply_batch([Behaviour(f"u{rng.integers(4)}", f"i{rng.integers(420)}", "events", 0, k) for k in range(200)])
    bse_commands.set_store_factory(lambda max_seq_len: s)
    yield s
    bse_commands.set_store_factory(None)


def test_rebuild_all_users_is_bit_identical_and_counts(store):
    v1 = store.maintained_versions[0]
    before = {u: store._read_blobs([u], v1)[0] for u in ("u0", "u1", "u2", "u3")}
    res = CliRunner().invoke(bse_commands.app, ["rebuild", "--model-version", "v1", "--embeddings", SPEC])
    assert res.exit_code == 0, res.output
    assert "users=4 behaviours=120" in res.output  # 4 users x max_seq_len 30
    assert {u: store._read_blobs([u], v1)[0] for u in before} == before

    # a new version for two users only: tables appear for them, not for the others
    res = CliRunner().invoke(bse_commands.app, ["rebuild", "--model-version", "v2", "--embeddings", SPEC, "--users", "u0,u2"])
    assert res.exit_code == 0, res.output
    assert "users=2 behaviours=60" in res.output
    v2 = next(n for n in store._versions if n.startswith("v2+"))
    assert store._read_blobs(["u0", "u1", "u2"], v2)[1] is None
    assert store._read_blobs(["u0"], v2)[0] == before["u0"]  # same embeddings and hasher: same sums


def test_stats_prints_length_and_bytes(store):
    res = CliRunner().invoke(bse_commands.app, ["stats", "--user", "u1", "--model-version", "v1", "--embeddings", SPEC])
    assert res.exit_code == 0, res.output
    m = re.search(r"sequence_length=(\d+) table_bytes=(\d+)", res.output)
    assert m and int(m.group(1)) == 30
    assert int(m.group(2)) == len(store._read_blobs(["u1"], store.maintained_versions[0])[0]) > 0
    res = CliRunner().invoke(bse_commands.app, ["stats", "--user", "nobody", "--model-version", "v1", "--embeddings", SPEC])
    assert "sequence_length=0 table_bytes=0" in res.output


def test_bad_embeddings_spec_is_a_usage_error(store):
    res = CliRunner().invoke(bse_commands.app, ["stats", "--user", "u1", "--model-version", "v1", "--embeddings", "nope:1"])
    assert res.exit_code != 0
    assert "embeddings" in res.output
