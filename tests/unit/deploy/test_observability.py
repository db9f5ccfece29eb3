"""The dashboard and alerts query only metrics the code exports, and the dashboard file is current."""

import json
import re
from pathlib import Path

import prometheus_client

import pipelines.stream.bse_encoder  # noqa: F401  (registers its metrics)
import pipelines.stream.feature_publisher  # noqa: F401
import pipelines.stream.metrics  # noqa: F401
import services.metrics  # noqa: F401
from deploy.grafana.build_dashboard import build

ROOT = Path(__file__).resolve().parents[3]


def _exported() -> set[str]:
    names = set()
    for metric in prometheus_client.REGISTRY.collect():
        for s in metric.samples:
            names.add(s.name)
        names.add(metric.name)
        names |= {metric.name + suf for suf in ("_bucket", "_count", "_sum", "_total")}
    return names


def _queried(text: str) -> set[str]:
    return set(re.findall(r"recstream_[a-z_]+", text))


def test_dashboard_queries_exported_metrics():
    missing = _queried(json.dumps(build())) - _exported()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"


def test_alerts_query_exported_metrics():
    missing = _queried((ROOT / "deploy/prometheus/alerts.yml").read_text()) - _exported()
    assert not missing, f"alerts query metrics nobody exports: {sorted(missing)}"


def test_committed_dashboard_is_regenerated():
    committed = json.loads((ROOT / "deploy/grafana/recstream-dashboard.json").read_text())
    assert committed == build(), "run python deploy/grafana/build_dashboard.py"
