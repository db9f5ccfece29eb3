"""Fixtures and helpers for the Helm chart tests: a real helm (and, for the install tests,
kube-apiserver, etcd and the CRDs), built from the Go module proxy on first use and cached under
$RECSTREAM_HOME/cache (deploy/k8s/tools.py), so a fresh clone on this machine builds them once.
A missing tool is built, never skipped for. Build progress goes straight to the terminal.

Import the fixtures into a test module: `from tests.k8s_fixtures import k8s_tools, helm  # noqa: F401`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "recstream"
# The values files the chart is tested with: None is the chart's own defaults.
VALUES_FILES = {"default": None, "gpu": CHART / "ci" / "gpu-values.yaml",
                "production": CHART / "ci" / "production-values.yaml"}


def _visible_build(pytestconfig, build):
    """Run build() with pytest's output capture off, so its progress lines show as they come."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return build()
    with capman.global_and_fixture_disabled():
        return build()


@pytest.fixture(scope="session")
def k8s_tools(pytestconfig):
    from deploy.k8s.tools import K8sTools

    return K8sTools()  # progress to the terminal: _visible_build turns pytest's capture off around builds


@pytest.fixture(scope="session")
def helm(pytestconfig, k8s_tools, tmp_path_factory) -> "Helm":
    exe = _visible_build(pytestconfig, k8s_tools.helm)
    return Helm(exe, tmp_path_factory.mktemp("helm-home"))


class Helm:
    """The helm binary with its config/cache/data folders in a temp dir (never the user's)."""

    def __init__(self, exe: Path, home: Path):
        self.exe = exe
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(self.exe), *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout_s)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[1:])} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def template(self, *args: str, release: str = "rel", namespace: str = "recstream", values: Path | None = None) -> list[dict]:
        """The chart rendered (hooks included) as a list of objects."""
        vf = ["-f", str(values)] if values else []
        out = self.run("template", release, str(CHART), "-n", namespace, *vf, *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]


def values_args(values: Path | None) -> list[str]:
    return ["-f", str(values)] if values else []
