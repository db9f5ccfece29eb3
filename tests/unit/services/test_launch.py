"""`recstream serve reload`'s path (services/launch.py) without Ray: the reload command hands a file
to the serving process (state files + SIGHUP), which applies it with the overrides it started with
and answers; a bad file is refused before the server sees it, a failed apply keeps the old config."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from recstream.settings import Settings
from services import launch
from services.serve_file import read_serve_file

FILE = Path(__file__).resolve().parents[3] / "deploy/serve/recstream.yaml"


def _with_ranker_version(tmp_path: Path, version: str, name: str = "new.yaml") -> Path:
    doc = yaml.safe_load(FILE.read_text())
    for d in doc["applications"][0]["deployments"]:
        d["user_config"]["variants"]["A"]["ranker"]["version"] = version
    out = tmp_path / name
    out.write_text(yaml.safe_dump(doc))
    return out


def _serve(tmp_path, monkeypatch, requests: list, fail: bool = False):
    """Run serve_until_stopped in this (the main) thread while `requests` run in another."""
    applied = []

    def deploy(settings, sf, **kw):
        if fail:
            raise RuntimeError("controller unreachable")
        applied.append(sf)

    monkeypatch.setattr(launch, "deploy", deploy)
    overrides = {"port": 18123, "artifacts_dir": "/models"}
    sf = read_serve_file(FILE, **overrides)
    stop, results = threading.Event(), []

    def client():
        try:
            while not (tmp_path / "serve-18123.json").exists():  # the server is up
                time.sleep(0.01)
            for path in requests:
                try:
                    results.append(launch.request_reload(str(path), 18123, tmp_path, timeout_s=30))
                except launch.ServeReloadError as e:
                    results.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=client)
    t.start()
    launch.serve_until_stopped(Settings(), sf, overrides, tmp_path, stop, on_reload=lambda msg: None)
    t.join()
    return applied, results


def test_a_version_change_is_applied_in_place_with_the_start_overrides(tmp_path, monkeypatch):
    new = _with_ranker_version(tmp_path, "v7")
    applied, [out] = _serve(tmp_path, monkeypatch, [new])
    assert out["ok"] and "in place" in out["message"] and out["variants"]["A"]["ranker"] == "v7"
    [sf] = applied
    assert sf.config.variants["A"].ranker.version == "v7"
    assert sf.config.port == 18123 and sf.config.artifacts_dir == "/models"  # what the server started with
    assert not (tmp_path / "serve-18123.json").exists(), "the server removes its state file when it stops"


def test_an_args_change_is_applied_and_said_to_replace_the_replicas(tmp_path, monkeypatch):
    doc = yaml.safe_load(FILE.read_text())
    doc["applications"][0]["args"]["coarse_top_k"] = 300
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(doc))
    _, [out] = _serve(tmp_path, monkeypatch, [path])
    assert out["ok"] and "replaced the replicas" in out["message"]


def test_a_bad_file_is_refused_before_the_server_and_a_failed_apply_keeps_the_old_config(tmp_path, monkeypatch):
    doc = yaml.safe_load(FILE.read_text())
    doc["applications"][0]["args"]["variants"] = doc["applications"][0]["deployments"][0]["user_config"]["variants"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="not in args"):
        launch.request_reload(str(bad), 18123, tmp_path)
    applied, [err] = _serve(tmp_path, monkeypatch, [_with_ranker_version(tmp_path, "v8")], fail=True)
    assert isinstance(err, launch.ServeReloadError) and "controller unreachable" in str(err) and not applied


def test_no_server_on_the_port_is_a_clear_error(tmp_path):
    with pytest.raises(launch.ServeReloadError, match="no `recstream serve` on port 18124"):
        launch.request_reload(str(FILE), 18124, tmp_path)
