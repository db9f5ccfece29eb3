"""helm/recstream without a cluster: helm lint and helm template with the default, GPU and
production-like values files, what the rendered objects promise (ServeConfig-valid serve config,
non-root read-only pods, probes, resources, the GPU group, artefacts from a volume or an object
store), and values the schema or the chart's cross-field checks refuse, with the field named.
The install into a real API server is tests/integration/test_helm.py."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.k8s_fixtures import CHART, REPO, VALUES_FILES, helm, k8s_tools, values_args  # noqa: F401

WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def _pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template: workloads and the RayService's groups."""
    out = []
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in WORKLOADS:
            out.append((name, o["spec"]["template"]["spec"]))
        elif o["kind"] == "RayService":
            rc = o["spec"]["rayClusterConfig"]
            out.append((f"{name}/head", rc["headGroupSpec"]["template"]["spec"]))
            out += [(f"{name}/{g['groupName']}", g["template"]["spec"]) for g in rc["workerGroupSpecs"]]
    return out


def _one(objs: list[dict], kind: str, suffix: str = "") -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def _serve_app(objs: list[dict]) -> dict:
    cfg = yaml.safe_load(_one(objs, "RayService")["spec"]["serveConfigV2"])
    (app,) = cfg["applications"]
    return app


def _variants(app: dict) -> dict:
    """The variants every deployment of the app carries in its user_config (the same on each)."""
    found = [d["user_config"]["variants"] for d in app["deployments"]]
    assert all(v == found[0] for v in found), "every deployment must see the same versions"
    return found[0]


@pytest.fixture(scope="module", params=list(VALUES_FILES))
def rendered(request, helm):
    return request.param, helm.template(values=VALUES_FILES[request.param])


def test_values_schema_is_current():
    from deploy.k8s.values_schema import SCHEMA_FILE, render

    assert SCHEMA_FILE.read_text() == render(), "values.schema.json is stale: run python -m deploy.k8s.values_schema"


def test_chart_files_are_the_deploy_files():
    # helm reads files only inside the chart; these are copies of the canonical ones.
    for chart_file, source in (("alerts.yml", "deploy/prometheus/alerts.yml"),
                               ("recstream-dashboard.json", "deploy/grafana/recstream-dashboard.json")):
        assert (CHART / "files" / chart_file).read_bytes() == (REPO / source).read_bytes(), (
            f"helm/recstream/files/{chart_file} differs from {source}: cp {source} helm/recstream/files/")


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_lint_strict(helm, name):
    r = helm.run("lint", "--strict", str(CHART), *values_args(VALUES_FILES[name]))
    assert "0 chart(s) failed" in r.stdout


def test_serve_config_is_a_valid_serve_config(rendered):
    from services.config import ServeConfig

    name, objs = rendered
    app = _serve_app(objs)
    assert app["import_path"] == "services.app:app_builder"
    cfg = ServeConfig(**app["args"])  # what app_builder does with them when Ray Serve loads the app
    assert cfg.artifacts_dir == "/artifacts"
    if name == "gpu":
        assert cfg.num_gpus == 1 and cfg.ranker_deployment
    names = [d["name"] for d in app["deployments"]]
    assert names == list(cfg.deployment_names), "each deployment of the layout, with the variants as its user_config"
    assert "variants" not in app["args"], "a version under args would replace every replica on a version change"
    ServeConfig(**{**app["args"], "variants": _variants(app)})


def test_default_serve_config_is_deploy_serve_recstream_yaml():
    """The chart serves what deploy/serve/recstream.yaml serves, but with pinned versions (the BSE
    keeps tables for one pinned ranker version)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]
    ref = yaml.safe_load((REPO / "deploy" / "serve" / "recstream.yaml").read_text())["applications"][0]
    strip = lambda c: {k: v for k, v in c.items() if k not in ("variants", "user_config")}  # noqa: E731
    assert strip(values["config"]) == ref["args"]
    run = [d for d in values["deployments"] if d["name"] in [r["name"] for r in ref["deployments"]]]
    assert run == [strip(d) for d in ref["deployments"]]
    # the ranker's options are kept in the values for the GPU group (there the ranker is its own deployment)
    assert "ranker" in [d["name"] for d in values["deployments"]] and not values["config"]["ranker_deployment"]
    unpin = lambda vs: json.loads(json.dumps(vs).replace('"version": "v1"', '"version": "latest"'))  # noqa: E731
    assert unpin(values["config"]["variants"]) == _variants(ref)
    file_http = yaml.safe_load((REPO / "deploy" / "serve" / "recstream.yaml").read_text())["http_options"]
    assert values["httpOptions"] == {k: v for k, v in file_http.items() if k not in ("host", "port")}


def test_pods_are_non_root_read_only_and_bounded(rendered):
    name, objs = rendered
    specs = _pod_specs(objs)
    assert len(specs) >= 7
    for where, spec in specs:
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (where, c["name"])
            assert ":latest" not in c["image"], (where, c["image"])


def test_processors(rendered):
    name, objs = rendered
    deps = {o["metadata"]["name"].removeprefix("rel-recstream-"): o for o in objs if o["kind"] == "Deployment"}
    assert set(deps) == {"popularity", "feature-writer", "feature-publisher", "bse-encoder"}
    assert deps["feature-publisher"]["spec"]["replicas"] == 1
    for proc, d in deps.items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["args"][:2] == ["process", proc]
        assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(c), proc
    assert "--publish" in deps["feature-writer"]["spec"]["template"]["spec"]["containers"][0]["args"]
    # the encoder keeps the tables of the served ranker version (the largest variant's)
    args = deps["bse-encoder"]["spec"]["template"]["spec"]["containers"][0]["args"]
    version = _variants(_serve_app(objs))["A"]["ranker"]["version"]
    assert args[args.index("--model-version") + 1] == version
    assert args[args.index("--embeddings") + 1] == f"artifact:ranker/{version}"
    pdbs = {o["metadata"]["name"] for o in objs if o["kind"] == "PodDisruptionBudget"}
    assert {f"rel-recstream-{p}" for p in deps} <= pdbs


def test_hook_jobs(rendered):
    _, objs = rendered
    jobs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}
    hooks = {n.removeprefix("rel-recstream-").split("-")[0]: o["metadata"]["annotations"]["helm.sh/hook"] for n, o in jobs.items()}
    assert hooks == {"create": "pre-install,pre-upgrade", "feast": "post-install,pre-upgrade",
                     "bse": "post-install,pre-upgrade"}
    commands = sorted(" ".join(o["spec"]["template"]["spec"]["containers"][0]["args"][:2]) for o in jobs.values())
    assert commands == ["bse rebuild", "feast apply", "topics --partitions"]


def test_gpu_group_only_when_enabled(rendered):
    name, objs = rendered
    groups = {g["groupName"]: g for g in _one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    if name != "gpu":
        assert set(groups) == {"cpu-workers"}
        assert "nvidia.com/gpu" not in json.dumps(objs)
        return
    gpu = groups["gpu-workers"]["template"]["spec"]
    (c,) = gpu["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-cuda")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_artifacts_come_from_a_volume_or_an_object_store(rendered):
    name, objs = rendered
    specs = dict(_pod_specs(objs))
    ray = [s for w, s in specs.items() if w.startswith("RayService/")]
    encoder = specs["Deployment/rel-recstream-bse-encoder"]
    for spec in [*ray, encoder]:
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["artifacts"]["mountPath"] == "/artifacts" and mounts["artifacts"]["readOnly"] is True
        if name == "production":  # objectStore: rclone fills an emptyDir first
            assert "emptyDir" in vols["artifacts"]
            assert [c["name"] for c in spec["initContainers"]] == ["artifacts-init"]
            assert "s3:recstream-models/prod/models" in " ".join(spec["initContainers"][0]["command"])
        else:
            assert "emptyDir" in vols["artifacts"] or "persistentVolumeClaim" in vols["artifacts"]
    if name == "production":
        for spec in ray:  # and keeps it in step with the store while the pods run
            assert "artifacts-sync" in [c["name"] for c in spec["containers"]]


def test_monitoring_objects(rendered):
    name, objs = rendered
    kinds = {o["kind"] for o in objs}
    dashboard = _one(objs, "ConfigMap", "-dashboard")
    assert json.loads(dashboard["data"]["recstream-dashboard.json"]) == json.loads(
        (REPO / "deploy/grafana/recstream-dashboard.json").read_text())
    if name != "production":
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}  # off by default
        return
    rule = _one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    ports = {e["port"] for e in _one(objs, "ServiceMonitor")["spec"]["endpoints"]}
    assert ports == {"metrics", "serve"}


def test_network_policies(rendered):
    _, objs = rendered
    nps = {o["metadata"]["name"].removeprefix("rel-recstream-"): o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    assert {"default-deny", "processors", "ray", "jobs"} <= set(nps)
    assert nps["default-deny"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "rel"}
    # processors: no ingress but metrics; egress Kafka, Redis, DNS (+ the object store in production)
    assert [r["ports"][0]["port"] for r in nps["processors"]["ingress"]] == [9101]
    egress_ports = [sorted(p["port"] for p in r["ports"]) for r in nps["processors"]["egress"]]
    assert egress_ports[:3] == [[9092], [6379], [53, 53]]
    # the Serve port is the one ingress that comes from outside the release
    serve_rule = nps["ray"]["ingress"][0]
    assert serve_rule["ports"] == [{"port": 8000, "protocol": "TCP"}]


def test_kafka_replication_and_redis_cluster_reach_every_container(rendered):
    """The replication settings are RECSTREAM_* variables of the settings ConfigMap, which every
    recstream container loads (null replication values stay unset so the code follows the cluster:
    min(3, brokers), min.insync.replicas 2 from 3 on); Redis Cluster nodes become every container's
    RECSTREAM_REDIS_URL as a redis+cluster:// URL, the Secret's URL otherwise."""
    name, objs = rendered
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings")]
    data = cm["data"]
    assert data["RECSTREAM_KAFKA_ACKS"] == "all"
    if name == "production":
        assert (data["RECSTREAM_KAFKA_REPLICATION_FACTOR"], data["RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    else:
        assert not {"RECSTREAM_KAFKA_REPLICATION_FACTOR", "RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS"} & set(data)
    from recstream.settings import Settings

    # What the pods will load: every RECSTREAM_* variable is a setting (an unknown one would be ignored
    # silently), and the code's own settings accept every value the chart renders for them.
    fields = {k.removeprefix("RECSTREAM_").lower(): v for k, v in data.items() if k.startswith("RECSTREAM_")}
    fields.pop("artifacts_dir")  # read by features/model_store.py artifacts_root, not a Settings field
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    s = Settings(**fields)
    assert s.kafka_acks == "all"
    cluster_url = "redis+cluster://" + ",".join(f"redis-{i}.redis.redis.svc:6379" for i in range(3))
    for o in objs:
        if o["kind"] == "Deployment":
            (c,) = o["spec"]["template"]["spec"]["containers"]
            (url,) = [e for e in c["env"] if e["name"] == "RECSTREAM_REDIS_URL"]
            if name == "production":
                assert url == {"name": "RECSTREAM_REDIS_URL", "value": cluster_url}, url
                assert Settings(redis_url=url["value"]).redis_key_layout == "partitioned"
            else:
                assert "secretKeyRef" in url["valueFrom"], url
            assert {"configMapRef": {"name": cm["metadata"]["name"]}} in c["envFrom"], o["metadata"]["name"]


@pytest.mark.parametrize("args, message", [
    (["--set", "processors.featureWriter.replicas=-1"], "at '/processors/featureWriter/replicas': minimum: got -1, want 0"),
    (["--set-json", "serve.config.coarse_top_k=100001"], "at '/serve/config/coarse_top_k': maximum"),
    (["--set", "serve.config.layout=mesh"], "at '/serve/config/layout'"),
    (["--set", "serve.config.ranker_timeout=5"], "additional properties 'ranker_timeout' not allowed"),
    (["--set", "artifacts.source=image"], "at '/artifacts/source'"),
    (["--set", "processors.featurePublisher.replicas=2"], "at '/processors/featurePublisher/replicas': maximum"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot'"),
    (["--set", "kafka.bootstrap=broker-without-port"], "at '/kafka/bootstrap'"),
    (["--set", "redis.url=http://redis:6379"], "at '/redis/url'"),
    (["--set", "gpu.ranker.numGpus=0"], "at '/gpu/ranker/numGpus'"),
    (["--set", "serve.config.variants.A.ranker.name="], "at '/serve/config/variants/A/ranker/name'"),
    # cross-field rules: the render fails with the values in the message
    (["--set", "processors.featureWriter.replicas=8"],
     "processors.featureWriter.replicas (8) must be <= kafka.topics.partitions (4)"),
    (["--set-json", "serve.config.variants.A.share=0.5"], "serve.config.variants: shares must sum to 1, got 0.6"),
    (["--set-json", "serve.config.coarse_top_k=2000"], "serve.config.coarse_top_k (2000) must be <= candidate_top_k (1000)"),
    (["--set", "serve.config.variants.A.ranker.version=latest"], "bse.modelVersion: the BSE keeps SDIM tables for one pinned"),
    (["--set", "artifacts.source=objectStore"], "artifacts.objectStore.url"),
    (["--set-json", 'serve.deployments=[{"name":"retriever"}]'], "at '/serve/deployments/0/name'"),
    (["--set-json", 'serve.deployments=[{"name":"ranker","user_config":{}}]'], "at '/serve/deployments/0'"),
    (["--set-json", "serve.httpOptions.request_timeout_s=0"], "at '/serve/httpOptions/request_timeout_s'"),
    (["--set", "kafka.replication.acks=2"], "at '/kafka/replication/acks'"),
    (["--set", "kafka.replication.factor=0"], "at '/kafka/replication/factor'"),
    (["--set-json", 'redis.cluster.nodes=["redis-0"]'], "at '/redis/cluster/nodes/0'"),
    (["--set", "kafka.replication.factor=2", "--set", "kafka.replication.minInsyncReplicas=3"],
     "kafka.replication.minInsyncReplicas (3) must be <= kafka.replication.factor (2)"),
    (["--set", "kafka.replication.minInsyncReplicas=2", "--set-string", "kafka.replication.acks=1"],
     "kafka.replication.minInsyncReplicas (2) is ignored with kafka.replication.acks=1"),
    (["--set", "kafka.dev.enabled=true", "--set", "kafka.replication.factor=3"],
     "kafka.replication.factor (3) with kafka.dev.enabled: the dev broker is a single node"),
    (["--set", "redis.dev.enabled=true", "--set-json", 'redis.cluster.nodes=["r0:6379"]'],
     "redis.cluster.nodes (r0:6379) and redis.dev.enabled"),
])
def test_bad_values_are_refused_with_the_field_named(helm, args, message):
    r = helm.run("template", "rel", str(CHART), *args, check=False)
    assert r.returncode != 0, f"{args} rendered"
    assert message in r.stderr, r.stderr
