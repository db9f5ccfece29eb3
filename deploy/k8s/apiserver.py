"""A real Kubernetes control plane without nodes: etcd and kube-apiserver on loopback.

For testing the Helm chart against the API server itself (admission, schema and strict field
validation of built-in kinds and CRDs, PodSecurity), not a cluster: no kubelet, scheduler or
controller-manager runs, so no pod ever starts and no controller acts on an object. Ports are
ones the OS reports free; all state (etcd data, certificates, the service-account key, the token
file and a kubeconfig) lives under one folder that the caller owns (a pytest temp dir).

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop() runs on `kill` too, not only on Ctrl-C
    with LocalApiServer(tools, workdir) as api:
        api.apply_crds(folder)            # CRDs, then waits until they are served
        api.create(obj, dry_run=True)     # one object with fieldValidation=Strict
        subprocess.run([helm, "--kubeconfig", api.kubeconfig, "install", ...])

`python -m deploy.k8s.apiserver` starts one (with the KubeRay and monitoring CRDs) and prints
its kubeconfig until Ctrl-C, to try the chart by hand.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import httpx
import yaml

from deploy.local.stack import free_ports
from recstream.errors import StackError

log = logging.getLogger(__name__)


class ApiError(StackError):
    """The API server refused a request; carries its HTTP status and the Status message."""

    def __init__(self, what: str, status: int, message: str):
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the process that started it dies (a killed test session
    leaves no API server behind). Linux only; elsewhere the caller's stop() is all there is."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalApiServer:
    """etcd + kube-apiserver processes, a bearer-token client, and a kubeconfig for helm.

    Args:
        tools: a deploy.k8s.tools.K8sTools (builds or finds the binaries).
        workdir: an empty folder for all state; removed by nobody here (pytest cleans its own).
        ready_timeout_s: how long the API server may take to answer /readyz.
    """

    def __init__(self, tools: Any, workdir: Path, ready_timeout_s: float = 180.0):
        self.tools = tools
        self.dir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.token = secrets.token_hex(16)
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0
        self.url = ""
        self._client: httpx.Client | None = None
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}  # (apiVersion, kind) -> (plural, namespaced)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "LocalApiServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def start(self) -> None:
        etcd, apiserver = self.tools.etcd(), self.tools.kube_apiserver()
        self.dir.mkdir(parents=True, exist_ok=True)
        etcd_client, etcd_peer, self.port = free_ports(3)
        self.url = f"https://127.0.0.1:{self.port}"
        self._spawn("etcd", [
            str(etcd), "--name", "default", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._service_account_key()
        (self.dir / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self._spawn("kube-apiserver", [
            str(apiserver),
            "--etcd-servers", f"http://127.0.0.1:{etcd_client}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(self.port),
            "--cert-dir", str(self.dir / "certs"),  # a self-signed serving certificate is generated there
            "--token-auth-file", str(self.dir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(self.dir / "sa.pub"),
            "--service-account-signing-key-file", str(self.dir / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--allow-privileged=false", "--profiling=false", "--v=0",
        ])
        self._write_kubeconfig()
        self._client = httpx.Client(base_url=self.url, verify=False, timeout=60.0,
                                    headers={"Authorization": f"Bearer {self.token}"})
        self._wait_ready()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for name in ("kube-apiserver", "etcd"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        logf = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(cmd, cwd=self.dir, stdout=logf, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)

    def log_tail(self, name: str, n: int = 40) -> str:
        f = self.dir / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.exists() else ""

    def _service_account_key(self) -> None:
        openssl = shutil.which("openssl")
        if openssl:
            subprocess.run([openssl, "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True, capture_output=True)
            subprocess.run([openssl, "rsa", "-in", str(self.dir / "sa.key"), "-pubout", "-out", str(self.dir / "sa.pub")],
                           check=True, capture_output=True)
            return
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        (self.dir / "sa.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                        serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin", "namespace": "default"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise StackError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")
            try:
                r = self.client.get("/readyz")
                if r.status_code == 200:
                    return
                last = f"/readyz {r.status_code}: {r.text[-300:]}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        raise StackError(f"kube-apiserver not ready after {self.ready_timeout_s:.0f} s ({last}):\n"
                         f"{self.log_tail('kube-apiserver')}")

    # ------------------------------------------------------------------ API

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise StackError("LocalApiServer is not started")
        return self._client

    def request(self, method: str, path: str, what: str = "", **kw: Any) -> httpx.Response:
        r = self.client.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                msg = r.json().get("message", r.text)
            except ValueError:
                msg = r.text
            raise ApiError(what or f"{method} {path}", r.status_code, msg)
        return r

    def get(self, path: str) -> dict:
        return self.request("GET", path).json()

    def apply_crds(self, folders: Iterable[Path], timeout_s: float = 60.0) -> list[str]:
        """Create every CRD in the folders' *.yaml files and wait until each is Established
        and its group/version is served. Returns the CRD names."""
        names = []
        for folder in folders:
            for f in sorted(Path(folder).glob("*.yaml")):
                for doc in yaml.safe_load_all(f.read_text()):
                    if doc:
                        self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                     f"create CRD {doc['metadata']['name']}", json=doc)
                        names.append(doc["metadata"]["name"])
        deadline = time.monotonic() + timeout_s
        for name in names:
            while True:
                crd = self.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
                served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
                if conds.get("Established") == "True" and all(
                        self.client.get(f"/apis/{crd['spec']['group']}/{v}").status_code == 200 for v in served):
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"CRD {name} not established after {timeout_s:.0f} s: {conds}")
                time.sleep(0.25)
        self._resources.clear()
        return names

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.request("POST", "/api/v1/namespaces", f"create namespace {name}",
                     json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._resources:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                found = self.get(path)["resources"]
            except ApiError as e:
                raise ApiError(f"{kind} ({api_version})", e.status, "the server does not serve this API version") from e
            for res in found:
                if "/" not in res["name"]:
                    self._resources[(api_version, res["kind"])] = (res["name"], res["namespaced"])
            if key not in self._resources:
                raise StackError(f"the server serves no kind {kind} in {api_version}")
        return self._resources[key]

    def path(self, obj: dict, namespace: str) -> str:
        """The collection path of an object's kind (in namespace when the kind is namespaced)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = self.resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        return f"{base}/namespaces/{namespace}/{plural}" if namespaced else f"{base}/{plural}"

    def create(self, obj: dict, namespace: str, dry_run: bool = True) -> tuple[dict, list[str]]:
        """Create one object with strict server-side field validation (an unknown or duplicate
        field is an error, not a warning); dry_run stores nothing. Returns the object as the
        server would store it, and the server's warnings (e.g. PodSecurity's)."""
        params = {"fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        r = self.request("POST", self.path(obj, namespace), what, params=params, json=obj)
        return r.json(), r.headers.get_list("warning")

    def list_objects(self, api_version: str, kind: str, namespace: str) -> list[dict]:
        return self.get(self.path({"apiVersion": api_version, "kind": kind}, namespace))["items"]


class JobCompleter:
    """Stands in for the Job controller that this control plane lacks: marks every Job in a
    namespace Complete (succeeded 1), so that `helm install/upgrade` gets past its hook Jobs,
    which it waits for. Records the names it completed, in order."""

    def __init__(self, api: LocalApiServer, namespace: str, interval_s: float = 0.2):
        self.api, self.namespace, self.interval_s = api, namespace, interval_s
        self.completed: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-completer-{namespace}", daemon=True)

    def __enter__(self) -> "JobCompleter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for job in self.api.list_objects("batch/v1", "Job", self.namespace):
                    if not job.get("status", {}).get("succeeded"):
                        self._complete(job)
            except Exception as e:  # keep polling; the test reads errors
                self.errors.append(f"{type(e).__name__}: {e}")

    def _complete(self, job: dict) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conds = [{"type": t, "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods",
                  "lastProbeTime": now, "lastTransitionTime": now} for t in ("SuccessCriteriaMet", "Complete")]
        status = {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
                  "uncountedTerminatedPods": {}, "conditions": conds}
        name = job["metadata"]["name"]
        self.api.request("PATCH", f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}/status", f"complete Job {name}",
                         content=json.dumps({"status": status}), headers={"Content-Type": "application/merge-patch+json"})
        self.completed.append(name)


def main() -> int:
    from deploy.k8s.tools import K8sTools

    tools = K8sTools()
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else tools.home / "k8s-local"
    if workdir.exists():
        shutil.rmtree(workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop() runs on `kill` too, not only on Ctrl-C
    with LocalApiServer(tools, workdir) as api:
        api.apply_crds([tools.kuberay_crds(), tools.monitoring_crds()])
        print(f"kube-apiserver on {api.url} (no nodes: pods never start)\nexport KUBECONFIG={api.kubeconfig}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
