"""deploy/serve/recstream.yaml is a valid Ray Serve config whose args are a valid ServeConfig."""

from pathlib import Path

import yaml

from services.config import ServeConfig

ROOT = Path(__file__).resolve().parents[3]
FILE = ROOT / "deploy/serve/recstream.yaml"


def test_serve_config_file_validates_as_ray_serve_schema_and_serve_config():
    # imported here, not at collection: the Ray pydantic notice filter (pyproject) applies to tests
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(FILE.read_text()))
    [app] = schema.applications
    assert app.import_path == "services.app:app_builder"
    assert {d.name for d in app.deployments} == {"ingress", "ranker"}
    cfg = ServeConfig.from_file(str(FILE))
    assert cfg.layout == "fused" and set(cfg.variants) == {"A", "B"}
    assert cfg.variants["B"].exploration.policy == "epsilon_slot"
    assert ServeConfig.from_file(str(FILE), port=9000).port == 9000


def test_app_builder_builds_the_graph_from_the_file_args(monkeypatch):
    from ray.serve._private.build_app import build_app as materialise

    from services.app import app_builder

    args = yaml.safe_load(FILE.read_text())["applications"][0]["args"]
    app = app_builder({**args, "layout": "split"})
    names = {d.name for d in materialise(app, name="t").deployments}
    assert names == {"ingress", "retrieval", "coarse", "ranker"}
