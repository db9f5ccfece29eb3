"""The `recstream` command as a user types it: `stack up` twice, `status`, `topics`, `produce`,
`stack down` on a stack of its own (temp home, ports from the OS), `serve --layout split` on
the session's Ray, and `serve` + `serve reload` as two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.local import LocalStack, StackConfig, free_ports
from tests.integration.kafka_utils import read_topic

pytestmark = pytest.mark.integration


def _cli(env: dict, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def _last_json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def test_stack_up_twice_then_topics_produce_status_and_down(tmp_path):
    home = tmp_path / "home"
    # the Kafka jars come from the shared cache (resolved once by Maven), everything else is new
    shared = StackConfig(home=Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))).kafka_libs
    if shared.exists():
        (home / "cache" / shared.parent.name).mkdir(parents=True)
        (home / "cache" / shared.parent.name / "libs").symlink_to(shared)
    kafka, controller, redis_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(RECSTREAM_HOME=str(home), RECSTREAM_STACK_KAFKA_PORT=str(kafka),
               RECSTREAM_STACK_KAFKA_CONTROLLER_PORT=str(controller), RECSTREAM_STACK_REDIS_PORT=str(redis_port),
               RECSTREAM_TOPIC_PARTITIONS="2")
    stack = LocalStack(StackConfig(home=home, kafka_port=kafka, kafka_controller_port=controller, redis_port=redis_port))
    pids = lambda: {n: (home / "stack" / n / f"{n}.pid").read_text() for n in ("kafka", "redis")}  # noqa: E731
    try:
        first = _cli(env, "stack", "up")
        assert first.returncode == 0, first.stderr[-3000:]
        up = _last_json(first.stdout)
        assert up["kafka_ready"] and up["redis_ready"] and up["kafka_bootstrap"] == f"127.0.0.1:{kafka}"
        started = pids()

        second = _cli(env, "stack", "up")  # idempotent: the running servers are left alone
        assert second.returncode == 0, second.stderr[-3000:]
        assert _last_json(second.stdout)["kafka_ready"] and pids() == started

        status = _cli(env, "stack", "status")
        assert status.returncode == 0 and _last_json(status.stdout)["ready"] is True

        topics = _cli(env, "topics")
        assert topics.returncode == 0, topics.stderr[-2000:]
        assert {"recstream.events", "recstream.events.dlq", "recstream.impressions"} <= set(topics.stdout.split()), topics.stdout

        produced = _cli(env, "produce", "synthetic", "--users", "5", "--seq-len", "20", "--items", "50")
        assert produced.returncode == 0, produced.stderr[-2000:]
        assert "produced 100 events to recstream.events" in produced.stdout
        assert len(read_topic(f"127.0.0.1:{kafka}", "recstream.events", 100, timeout_s=60)) == 100

        down = _cli(env, "stack", "down")
        assert down.returncode == 0 and "stack stopped" in down.stdout
        after = _cli(env, "stack", "status")
        assert after.returncode == 3 and _last_json(after.stdout)["ready"] is False
    finally:
        stack.down()


def test_serve_with_the_split_layout_answers(settings, ray_serve, tmp_path, monkeypatch):
    """`recstream serve --config F --layout split` on the session's Ray: the stages run as their
    own deployments and the API answers (the command's wait is replaced by the requests)."""
    from ray import serve
    from typer.testing import CliRunner

    from cli import main as cli
    from recstream import settings as settings_module
    from tests.serving_fixtures import save_stage_models

    save_stage_models(tmp_path / "artifacts")
    config = tmp_path / "serve.yaml"
    config.write_text("user_feature_source: none\n"
                      "deadlines: {inputs_timeout_ms: 3000, candidates_timeout_ms: 3000, coarse_timeout_ms: 3000, "
                      "ranker_timeout_ms: 5000, redis_timeout_ms: 1000}\n")
    for k, v in settings.to_env().items():
        monkeypatch.setenv(k, v)
    settings_module.get_settings.cache_clear()
    port = ray_serve.rsplit(":", 1)[1]
    seen: dict = {}

    def requests_instead_of_waiting(*args, **kwargs):  # in place of serving until stopped (and reloads)
        import time

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and httpx.get(f"{ray_serve}/readyz", timeout=10).status_code != 200:
            time.sleep(0.3)
        seen["answer"] = httpx.post(f"{ray_serve}/v1/recommend", json={"user_id": "u3", "k": 5}, timeout=60)
        seen["deployments"] = set(serve.status().applications["recstream"].deployments)

    import services.launch

    monkeypatch.setattr(services.launch, "serve_until_stopped", requests_instead_of_waiting)
    try:
        out = CliRunner().invoke(cli.app, ["serve", "--config", str(config), "--layout", "split", "--port", port,
                                           "--artifacts-dir", str(tmp_path / "artifacts")])
    finally:
        serve.delete("recstream")
        settings_module.get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert f"serving on http://127.0.0.1:{port}" in out.output
    assert {"ingress", "retrieval", "coarse", "ranker"} <= seen["deployments"], seen["deployments"]
    body = seen["answer"].json()
    assert seen["answer"].status_code == 200 and len(body["items"]) == 5, body
    assert body["model_versions"] == {"retrieval": "v1", "coarse": "v1", "ranker": "v1"}, body
    # every stage answered; the stream never wrote this prefix's BSE tables for ranker v1
    assert body["degraded_reasons"] == ["bse:version_missing"], body


def test_serve_then_serve_reload_swaps_a_version_in_place(settings, tmp_path):
    """The README's procedure as a user runs it: `recstream serve --config FILE` in one process,
    then `recstream serve reload --config NEW` from another; the new version answers, through the
    same replicas, without a restart of the server."""
    import signal
    import time

    import yaml

    from tests.serving_fixtures import save_stage_models

    root = tmp_path / "artifacts"
    save_stage_models(root, version="v1", seed=0)
    save_stage_models(root, version="v2", seed=1)
    [port] = free_ports(1)
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/serve/recstream.yaml").read_text())
    app = doc["applications"][0]
    app["args"].update(user_feature_source="none", candidate_top_k=200, coarse_top_k=50, max_k=20,
                       popular_pool_size=100, deadlines={"inputs_timeout_ms": 3000, "candidates_timeout_ms": 3000,
                                                         "coarse_timeout_ms": 3000, "ranker_timeout_ms": 5000,
                                                         "redis_timeout_ms": 1000})
    for d in app["deployments"]:
        d.pop("autoscaling_config", None)  # one replica each: the test checks that they survive

    def write(name: str, ranker: str) -> Path:
        variant = {"share": 1.0, **{s: {"name": n, "version": "v1"} for s, n in
                                    (("retrieval", "two_tower"), ("coarse", "hcn"))},
                   "ranker": {"name": "ranker", "version": ranker}}
        for d in app["deployments"]:
            d["user_config"] = {"variants": {"A": variant}}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        return path

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}, **settings.to_env(),
           "RECSTREAM_HOME": str(tmp_path / "home")}
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(write("v1.yaml", "v1")),
                               "--port", str(port), "--artifacts-dir", str(root)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ask() -> dict:
        r = httpx.post(f"{url}/v1/recommend", json={"user_id": "u3", "k": 5}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "recstream serve never became ready"
            time.sleep(0.5)
        assert ask()["model_versions"]["ranker"] == "v1"

        reload = _cli(env, "serve", "reload", "--config", str(write("v2.yaml", "v2")), "--port", str(port),
                      timeout_s=400)
        assert reload.returncode == 0, reload.stdout[-2000:] + reload.stderr[-2000:]
        assert "applied in place" in reload.stdout and '"ranker": "v2"' in reload.stdout, reload.stdout
        assert ask()["model_versions"]["ranker"] == "v2"
        assert server.poll() is None

        bad = _cli(env, "serve", "reload", "--config", str(tmp_path / "missing.yaml"), "--port", str(port))
        assert bad.returncode != 0 and "missing.yaml" in bad.stderr
        assert ask()["model_versions"]["ranker"] == "v2"  # a refused reload leaves the server as it was
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert "stopping" in out, out[-2000:]
