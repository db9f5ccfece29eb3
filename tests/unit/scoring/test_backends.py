"""scoring/backends.py: HCN's user tower traced and frozen gives eager torch's coarse scores (1e-5),
and a trace that cannot be made or does not agree falls back to eager."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from features.vectors import USER_VECTOR_NAMES
from scoring import backends
from scoring.config import ModelRef
from scoring.servables import CoarseServable
from tests.unit.scoring.test_servables import root  # noqa: F401  (module fixture: plain and feature models)


@pytest.mark.parametrize("version", ["v1", "features"])
def test_traced_user_tower_scores_equal_eager(root, version):  # noqa: F811
    ref = ModelRef(name="hcn", version=version)
    eager = CoarseServable(ref, str(root), backend="eager")
    traced = CoarseServable(ref, str(root), backend="torchscript")
    assert (eager.backend, traced.backend) == ("eager", "torchscript")
    rng = np.random.default_rng(0)
    known = list(eager.vocabs["item"].tokens)
    for n_hist in (0, 1, 7, 30, 200):  # empty, short, the window, longer than it
        hist = list(rng.choice(known, n_hist)) + (["never-seen"] if n_hist == 7 else [])
        items = list(rng.choice(known, 50, replace=False))
        uf = rng.standard_normal((1, len(USER_VECTOR_NAMES))).astype(np.float32) if version == "features" else None
        itf = rng.standard_normal((50, eager.model.config.n_item_feats)).astype(np.float32) if version == "features" else None
        for user in ("u3", "unknown-user"):
            np.testing.assert_allclose(traced.score(user, hist, items, uf, itf), eager.score(user, hist, items, uf, itf),
                                       rtol=0, atol=1e-5 * 20)  # scores are cosines / temperature (0.05)


def test_a_trace_that_fails_or_disagrees_serves_eagerly(root, monkeypatch, caplog):  # noqa: F811
    ref = ModelRef(name="hcn", version="v1")

    def broken(*a, **k):
        raise RuntimeError("cannot trace this")

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="scoring.backends"):
        m.setattr(torch.jit, "trace", broken)
        assert CoarseServable(ref, str(root), backend="torchscript").backend == "eager"
    assert "not traced (RuntimeError: cannot trace this)" in caplog.text
    caplog.clear()
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="scoring.backends"):
        m.setattr(backends, "TRACE_TOLERANCE", -1.0)  # nothing agrees closely enough
        assert CoarseServable(ref, str(root), backend="torchscript").backend == "eager"
    assert "differs from eager" in caplog.text
