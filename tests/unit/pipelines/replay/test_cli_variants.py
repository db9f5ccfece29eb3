"""`recstream replay run --variant ...` and the reproduction share in its report."""

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipelines.replay import cli as C
from pipelines.replay import data as D
from recstream.events import Event
from scoring.fusion import FusionConfig
from tests.serving_fixtures import save_stage_models
from tests.unit.pipelines.replay.test_variant_policy import FUSION, _log


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A parquet log of variant A (ranker k1, fused) with clicks, and ranker k1's artefacts (DR's
    direct model: it reads the logged click probabilities of the requests k1 served)."""
    root = tmp_path_factory.mktemp("replay-cli")
    save_stage_models(root / "artifacts", version="k1")
    imps = [r for r, _, _ in _log(80, seed=21)]
    rng = np.random.default_rng(0)
    evs = [Event(event_id=f"e{n}", user_id=r.user_id, item_id=s.item_id, type="click", ts=r.ts + 1000,
                 request_id=r.request_id, position=s.position)
           for n, r in enumerate(imps) for s in r.slate if rng.random() < 0.3 / (s.position + 1)]
    D.write_parquet(root / "log.parquet", D.ReplayLog(imps, evs))
    return root


def test_run_with_variants_reports_the_served_order_reproduced(logged, tmp_path):
    from pipelines.replay.cli import app

    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["run", "--from-parquet", str(logged / "log.parquet"), "--out", str(out),
                                 "--artifacts-dir", str(logged / "artifacts"), "--n-boot", "50",
                                 "--variant", "A=A", "--variant", "A-hcn=A,coarse_weight=3.0,ranker_weight=0.2"])
    assert r.exit_code == 0, r.output
    j = json.loads((out / "report.json").read_text())
    assert j["served_order_reproduced_share"] == 1.0 and j["served_reproduction"]["paths"] == {"logged": 80}
    assert set(j["policies"]) == {"logged", "A", "A-hcn"}
    assert j["policies"]["A"]["replay_paths"] == {"logged": 80}
    assert j["policies"]["A-hcn"]["replay_paths"] == {"fused": 80}
    # the served variant replayed deterministically: its greedy slots carry the same estimate
    # as the logged policy's where they agree, and another fusion is a different policy
    assert j["policies"]["A"]["unsupported_mass"] == 0.0
    assert j["policies"]["A-hcn"]["weight_mean"] != j["policies"]["A"]["weight_mean"]
    md = (out / "report.md").read_text()
    assert "Served order reproduced" in md and "(100.0%; A 100.0%)" in md


def test_variant_specs_are_checked_with_their_values(logged):
    imps = D.read_parquet(logged / "log.parquet").impressions
    pol = C._variant("A-k2=A,ranker=ranker:k2,cascade=ranker,retrieval_weight=0.5", imps, None)
    assert pol.versions["ranker"].version == "k2" and pol.fusion == FusionConfig(retrieval_weight=0.5)
    assert C._variant("A=A", imps, None).fusion == FUSION
    for spec, msg in [("A", "want NAME=VARIANT"), ("x=A,speed=3", "'speed=3' is not KEY=VALUE"),
                      ("x=A,coarse_weight=-1", "greater than or equal to 0"), ("x=B", "variant 'B' served none"),
                      ("x=A,cascade=coarse,coarse_weight=1", "fusion orders the ranker cascade only")]:
        with pytest.raises(typer.BadParameter, match=msg):
            C._variant(spec, imps, None)


def test_old_records_without_artefacts_cost_the_reproduction_check_not_the_report(tmp_path):
    """A log from before `scores` needs the served ranker to replay the served order; without its
    artefacts the report says why the share is missing and still estimates."""
    from pipelines.replay.policies import RankerScorers, VariantPolicy
    from pipelines.replay.report import run_replay

    imps = [r.model_copy(update={"scores": None}) for r, _, _ in _log(20, seed=4)]
    served = {"A": VariantPolicy("A as served", {"ranker": "k1"}, scorers=RankerScorers(str(tmp_path / "none")))}
    res = run_replay(D.ReplayLog(imps, []), [], tmp_path / "out", n_boot=20, plots=False, served=served)
    assert res["served_order_reproduced_share"] is None
    assert "cannot load model 'ranker' version 'k1'" in res["served_reproduction"]["error"]
    assert "Served order reproduced: unavailable (cannot load model" in (tmp_path / "out" / "report.md").read_text()
    assert "ips" in res["policies"]["logged"]["estimates"]


def test_variants_on_a_scored_log_need_no_artefacts(logged, tmp_path):
    from pipelines.replay.cli import app

    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["run", "--from-parquet", str(logged / "log.parquet"), "--out", str(out),
                                 "--artifacts-dir", str(tmp_path / "empty"), "--n-boot", "20", "--variant", "A=A"])
    assert r.exit_code == 0, r.output
    assert "DR's direct model unavailable" in r.output
    j = json.loads((out / "report.json").read_text())
    assert j["served_order_reproduced_share"] == 1.0 and "dr" not in j["policies"]["A"]["estimates"]
