"""deploy/serve/recstream.yaml is a valid Ray Serve config whose args are a valid ServeConfig, with
the versions in the deployments' user_config only (services/serve_file.py)."""

from pathlib import Path

import pytest
import yaml

from services.serve_file import ServeFileError, app_document, read_serve_file

ROOT = Path(__file__).resolve().parents[3]
FILE = ROOT / "deploy/serve/recstream.yaml"


def test_serve_config_file_validates_as_ray_serve_schema_and_serve_config():
    # imported here, not at collection: the Ray pydantic notice filter (pyproject) applies to tests
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(FILE.read_text()))
    [app] = schema.applications
    assert app.import_path == "services.app:app_builder"
    assert {d.name for d in app.deployments} == {"ingress"}  # CPU nodes: the ranker batches in the ingress
    assert "variants" not in app.args, "a version under args would restart every replica on a version change"
    assert all(d.user_config["variants"] == app.deployments[0].user_config["variants"] for d in app.deployments)
    cfg = read_serve_file(FILE).config
    assert cfg.layout == "fused" and not cfg.ranker_deployment and set(cfg.variants) == {"A", "B"}
    assert cfg.variants["B"].exploration.policy == "epsilon_slot"
    assert read_serve_file(FILE, port=9000).config.port == 9000
    sf = read_serve_file(FILE)
    assert sf.deployments["ingress"]["max_ongoing_requests"] == 1000 and "user_config" not in sf.deployments["ingress"]
    assert sf.http_options["request_timeout_s"] == 30


def test_app_builder_builds_the_graph_from_the_file_args(monkeypatch):
    from ray.serve._private.build_app import build_app as materialise

    from services.app import app_builder

    args = yaml.safe_load(FILE.read_text())["applications"][0]["args"]
    app = app_builder({**args, "layout": "split", "ranker_deployment": True})
    deployments = materialise(app, name="t").deployments
    assert {d.name for d in deployments} == {"ingress", "retrieval", "coarse", "ranker"}
    for d in deployments:  # the bound args never carry versions; user_config does
        assert "variants" not in repr(d.init_args), d.name
        assert set(d.user_config["variants"]) == {"A"}


def _write(tmp_path, doc) -> Path:
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_the_document_recstream_serve_applies_reads_back_as_the_same_config(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    cfg = read_serve_file(FILE, layout="split", ranker_deployment=True).config
    app = app_document(cfg, {"ingress": {"max_ongoing_requests": 7}}, env={"RECSTREAM_REDIS_PREFIX": "t"})
    assert [d["name"] for d in app["deployments"]] == ["ingress", "retrieval", "coarse", "ranker"]
    assert app["runtime_env"] == {"env_vars": {"RECSTREAM_REDIS_PREFIX": "t"}} and "variants" not in app["args"]
    ServeDeploySchema.model_validate({"applications": [app]})
    back = read_serve_file(_write(tmp_path, {"applications": [app]}))
    assert back.config == cfg and back.deployments["ingress"]["max_ongoing_requests"] == 7


def _gpu_layout(doc: dict) -> dict:
    """The shipped file as its comments say to run it on GPU nodes: the ranker as its own deployment."""
    app = doc["applications"][0]
    ingress = app["deployments"][0]
    app["args"]["ranker_deployment"] = True
    app["deployments"] = [ingress, {"name": "ranker", "user_config": ingress["user_config"], "max_ongoing_requests": 64}]
    return app


def test_the_gpu_layout_of_the_file_reads_with_a_ranker_deployment(tmp_path):
    sf = read_serve_file(_write(tmp_path, {"applications": [_gpu_layout(yaml.safe_load(FILE.read_text()))]}))
    assert sf.config.ranker_deployment and sf.deployments["ranker"]["max_ongoing_requests"] == 64


def test_versions_under_args_or_disagreeing_deployments_are_refused(tmp_path):
    doc = yaml.safe_load(FILE.read_text())
    app = _gpu_layout(doc)
    variants = app["deployments"][0]["user_config"]["variants"]
    with pytest.raises(ServeFileError, match="not in args"):
        read_serve_file(_write(tmp_path, {"applications": [{**app, "args": {**app["args"], "variants": variants}}]}))
    other = {"A": {**variants["A"], "share": 1.0}}
    deps = [app["deployments"][0], {**app["deployments"][1], "user_config": {"variants": other}}]
    with pytest.raises(ServeFileError, match="different variants"):
        read_serve_file(_write(tmp_path, {"applications": [{**app, "deployments": deps}]}))
    no_ranker = [app["deployments"][0], {k: v for k, v in app["deployments"][1].items() if k != "user_config"}]
    with pytest.raises(ServeFileError, match=r"\['ranker'\] carry no variants"):
        read_serve_file(_write(tmp_path, {"applications": [{**app, "deployments": no_ranker}]}))
    split_only = app["deployments"] + [{"name": "coarse"}]
    with pytest.raises(ServeFileError, match=r"\['coarse'\] are not run by this layout"):
        read_serve_file(_write(tmp_path, {"applications": [{**app, "deployments": split_only}]}))
