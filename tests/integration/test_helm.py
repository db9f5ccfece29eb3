"""helm/recstream installed into a real Kubernetes API server (etcd + kube-apiserver built from
the Go module proxy, on free loopback ports, state in the session's temp dir) with the KubeRay
CRDs v1.4.0 and the prometheus-operator's ServiceMonitor/PrometheusRule CRDs.

No kubelet, scheduler or controller-manager runs, so no pod starts: what is tested is that the
API server accepts every object of the chart (schema, admission, strict field validation,
PodSecurity "restricted"), that `helm install` and `helm upgrade` go through (a stand-in marks the
hook Jobs complete, the one thing helm waits for), and what the objects on the server say.
"""

from __future__ import annotations

import copy
import re
import time

import pytest
import yaml

from deploy.k8s.apiserver import ApiError, JobCompleter, LocalApiServer
from tests.k8s_fixtures import CHART, VALUES_FILES, _visible_build, helm, k8s_tools, values_args  # noqa: F401

# The first test on a fresh machine builds kube-apiserver, etcd and helm from source in its
# fixture (7-12 min on 2 busy cores), past the suite-wide 600 s timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
# helm prints the API server's warnings (an unknown field it dropped, a PodSecurity violation) on stderr.
WARNING = re.compile(r"warning|unknown field|would violate", re.IGNORECASE)


@pytest.fixture(scope="session")
def apiserver(pytestconfig, k8s_tools, tmp_path_factory):
    def build():
        return k8s_tools.kube_apiserver(), k8s_tools.etcd(), k8s_tools.kuberay_crds(), k8s_tools.monitoring_crds()

    _, _, kuberay, monitoring = _visible_build(pytestconfig, build)
    api = LocalApiServer(k8s_tools, tmp_path_factory.mktemp("kube"))
    api.start()
    try:
        crds = api.apply_crds([kuberay, monitoring])
        assert {"rayservices.ray.io", "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"} <= set(crds)
        yield api
    finally:
        api.stop()


def _namespace(api: LocalApiServer, name: str) -> str:
    api.create_namespace(name, RESTRICTED)
    return name


def _existing_secrets(api: LocalApiServer, ns: str) -> None:
    """The Secrets production-values.yaml names instead of credentials in values."""
    for name, data in (("recstream-redis", {"url": "redis://:pw@redis.redis.svc:6379/0"}),
                       ("recstream-object-store", {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s"})):
        api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}, ns, dry_run=False)


def _manifest(helm, api, release: str, ns: str, what: str = "manifest") -> list[dict]:
    out = helm.run("get", what, release, "-n", ns, kubeconfig=api.kubeconfig).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_every_object_accepted_with_strict_field_validation(helm, apiserver, name):
    """Each rendered object (hooks included), created with fieldValidation=Strict (dry run) in a
    namespace that enforces PodSecurity restricted: accepted, with no warning."""
    ns = _namespace(apiserver, f"strict-{name}")
    objs = helm.template(values=VALUES_FILES[name], namespace=ns)
    accepted = []
    for obj in objs:
        stored, warnings = apiserver.create(obj, ns, dry_run=True)
        assert not warnings, f"{obj['kind']}/{obj['metadata']['name']}: {warnings}"
        accepted.append(f"{stored['kind']}/{stored['metadata']['name']}")
    kinds: dict[str, int] = {}
    for a in accepted:
        kinds[a.split("/")[0]] = kinds.get(a.split("/")[0], 0) + 1
    print(f"{name}: {len(accepted)} objects accepted {dict(sorted(kinds.items()))}")
    assert len(accepted) == len(objs) >= 25


def test_unknown_rayservice_field_is_refused(helm, apiserver):
    """The RayService CRD's schema is strict on the server: a field KubeRay does not know is an
    error naming it (helm itself would only print the server's warning and drop the field)."""
    ns = _namespace(apiserver, "strict-unknown")
    (rs,) = [o for o in helm.template(namespace=ns) if o["kind"] == "RayService"]
    apiserver.create(rs, ns)  # the chart's own is accepted
    for path in (("spec", "serveConfigV3"), ("spec", "rayClusterConfig", "headGroupSpec", "rayStartParamz"),
                 ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "gpuCount")):
        bad = copy.deepcopy(rs)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "x"
        with pytest.raises(ApiError) as e:
            apiserver.create(bad, ns)
        assert e.value.status in (400, 422) and "unknown field" in e.value.message and path[-1] in e.value.message, e.value


def test_helm_install_then_upgrade_to_a_new_model_version(helm, apiserver):
    ns = _namespace(apiserver, "install-default")
    _install_and_upgrade(helm, apiserver, ns, None)


@pytest.mark.parametrize("name", ["gpu", "production"])
def test_helm_install_then_upgrade_other_values(helm, apiserver, name):
    ns = _namespace(apiserver, f"install-{name}")
    if name == "production":
        _existing_secrets(apiserver, ns)
    _install_and_upgrade(helm, apiserver, ns, VALUES_FILES[name])
    if name == "production":
        # Kafka replication and the Redis Cluster nodes reach the pods through the settings ConfigMap.
        cm = apiserver.get(apiserver.path({"apiVersion": "v1", "kind": "ConfigMap"}, ns) + "/rel-recstream-settings")
        assert {k: cm["data"][k] for k in ("RECSTREAM_KAFKA_REPLICATION_FACTOR", "RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS",
                                           "RECSTREAM_KAFKA_ACKS")} == {"RECSTREAM_KAFKA_REPLICATION_FACTOR": "3",
                                                                        "RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "2",
                                                                        "RECSTREAM_KAFKA_ACKS": "all"}
        deploy = apiserver.get(apiserver.path({"apiVersion": "apps/v1", "kind": "Deployment"}, ns) + "/rel-recstream-popularity")
        (c,) = deploy["spec"]["template"]["spec"]["containers"]
        (url,) = [e for e in c["env"] if e["name"] == "RECSTREAM_REDIS_URL"]
        assert url["value"].startswith("redis+cluster://") and url["value"].count(",") == 2, url


def _install_and_upgrade(helm, api: LocalApiServer, ns: str, values):
    with JobCompleter(api, ns) as jobs:
        t0 = time.monotonic()
        r = helm.run("install", "rel", str(CHART), "-n", ns, *values_args(values), "--timeout", "180s", kubeconfig=api.kubeconfig)
        assert not WARNING.search(r.stderr), r.stderr
        assert "STATUS: deployed" in r.stdout
        installed = _manifest(helm, api, "rel", ns)
        hooks = _manifest(helm, api, "rel", ns, "hooks")
        for obj in installed:  # every object is on the server as helm sent it
            plural_path = api.path(obj, ns)
            stored = api.get(f"{plural_path}/{obj['metadata']['name']}")
            assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
        print(f"{ns}: helm install {time.monotonic() - t0:.1f} s, {len(installed)} objects + {len(hooks)} hook Jobs")
        hook_names = {h["metadata"]["name"] for h in hooks}
        assert set(jobs.completed) == hook_names, (jobs.completed, jobs.errors)
        rs_path = api.path({"apiVersion": "ray.io/v1", "kind": "RayService"}, ns) + "/rel-recstream"
        old = yaml.safe_load(api.get(rs_path)["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]["user_config"]["variants"]["A"]["ranker"]["version"]
        _ray_pods_pass_restricted(api, ns, api.get(rs_path))

        # A new ranker version: serve config, BSE encoder and a rebuild Job for the version.
        new = f"{old}-next"
        done_before = list(jobs.completed)
        r = helm.run("upgrade", "rel", str(CHART), "-n", ns, *values_args(values), "--timeout", "180s",
                     "--set", f"serve.config.variants.A.ranker.version={new}", kubeconfig=api.kubeconfig)
        assert not WARNING.search(r.stderr), r.stderr
        serve = yaml.safe_load(api.get(rs_path)["spec"]["serveConfigV2"])
        [app] = serve["applications"]
        assert "variants" not in app["args"]  # only user_config changed: KubeRay/Serve reconfigure in place
        assert {d["user_config"]["variants"]["A"]["ranker"]["version"] for d in app["deployments"]} == {new}
        enc = api.get(api.path({"apiVersion": "apps/v1", "kind": "Deployment"}, ns) + "/rel-recstream-bse-encoder")
        args = enc["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--model-version") + 1] == new
        rebuilt = [n for n in jobs.completed[len(done_before):] if "bse-rebuild" in n]
        assert len(rebuilt) == 1 and rebuilt[0] not in done_before, jobs.completed
        job = api.get(api.path({"apiVersion": "batch/v1", "kind": "Job"}, ns) + f"/{rebuilt[0]}")
        assert job["spec"]["template"]["spec"]["containers"][0]["args"][:4] == ["bse", "rebuild", "--model-version", new]

        # The same version again: its tables are built, so no second rebuild.
        n = len(jobs.completed)
        helm.run("upgrade", "rel", str(CHART), "-n", ns, "--reuse-values", "--timeout", "180s", kubeconfig=api.kubeconfig)
        assert not [j for j in jobs.completed[n:] if "bse-rebuild" in j], jobs.completed[n:]
        history = helm.run("history", "rel", "-n", ns, "-o", "yaml", kubeconfig=api.kubeconfig).stdout
        assert [h["status"] for h in yaml.safe_load(history)] == ["superseded", "superseded", "deployed"]
        assert not jobs.errors, jobs.errors


def _ray_pods_pass_restricted(api: LocalApiServer, ns: str, rayservice: dict) -> None:
    """KubeRay turns each group's template into Pods; created as Pods here (dry run) in the
    restricted namespace, they pass PodSecurity admission and the core Pod validation that the
    CRD's schema does not apply."""
    rc = rayservice["spec"]["rayClusterConfig"]
    templates = [("head", rc["headGroupSpec"]["template"])] + [(g["groupName"], g["template"]) for g in rc["workerGroupSpecs"]]
    for group, tpl in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"ray-{group}", **{k: tpl["metadata"][k] for k in ("labels",)}},
               "spec": tpl["spec"]}
        _, warnings = api.create(pod, ns, dry_run=True)
        assert not warnings, (group, warnings)
