"""deploy/k8s/tools.py: the cache publishes a tool only after a whole build, builds once, and the
wrapper modules ask for the versions the module says it builds."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from deploy.k8s import tools as t
from recstream.errors import StackError


@pytest.fixture
def kt(tmp_path):
    return t.K8sTools(home=tmp_path, out=io.StringIO())


def test_cached_builds_once_and_publishes_whole(kt, tmp_path):
    calls = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "tool").write_text("binary")

    final = kt.cache / "tool-v1"
    assert kt._cached(final, "tool", build) == final / "tool"
    assert kt._cached(final, "tool", build) == final / "tool"
    assert len(calls) == 1 and (final / ".complete").exists()
    assert [p.name for p in kt.cache.iterdir() if not p.name.startswith(".")] == ["tool-v1"]  # no temp folder left


def test_failed_build_leaves_nothing_that_looks_built(kt):
    def build(d: Path) -> None:
        (d / "tool").write_text("half")
        raise StackError("compiler died")

    final = kt.cache / "tool-v1"
    with pytest.raises(StackError, match="compiler died"):
        kt._cached(final, "tool", build)
    assert not final.exists()
    assert [p.name for p in kt.cache.iterdir() if not p.name.startswith(".")] == []


def test_interrupted_earlier_attempt_is_replaced(kt):
    final = kt.cache / "tool-v1"
    final.mkdir(parents=True)
    (final / "tool").write_text("from a killed build")  # no .complete
    kt._cached(final, "tool", lambda d: (d / "tool").write_text("whole"))
    assert (final / "tool").read_text() == "whole"


def test_wrapper_hash_follows_its_files(tmp_path):
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "main.go").write_text("package main\n")
    h = t._tree_hash(tmp_path)
    (tmp_path / "go.mod").write_text("module x\n\nrequire y v1\n")
    assert t._tree_hash(tmp_path) != h


def test_wrappers_pin_the_versions_the_builder_names():
    api = (t.HERE / "kube-apiserver" / "go.mod").read_text()
    assert re.search(rf"^\s*k8s.io/kubernetes {re.escape(t.KUBERNETES_VERSION)}$", api, re.MULTILINE)
    staging = "v0." + t.KUBERNETES_VERSION.removeprefix("v1.")
    replaces = re.findall(r"^\s*(k8s.io/[\w-]+) => (k8s.io/[\w-]+) (\S+)$", api, re.MULTILINE)
    assert len(replaces) >= 30, "every staging module of k8s.io/kubernetes is replaced"
    assert all(a == b and v == staging for a, b, v in replaces), replaces
    assert "app.NewAPIServerCommand()" in (t.HERE / "kube-apiserver" / "main.go").read_text()
    etcd = (t.HERE / "etcd" / "go.mod").read_text()
    assert f"go.etcd.io/etcd/server/v3 {t.ETCD_VERSION}" in etcd
    assert "etcdmain.Main" in (t.HERE / "etcd" / "main.go").read_text()
    assert (t.HERE / "kube-apiserver" / "go.sum").exists() and (t.HERE / "etcd" / "go.sum").exists()


def test_cli_names_unknown_tools(capsys):
    assert t.main(["kubectl"]) == 2
    assert "kubectl" in capsys.readouterr().err
