"""Generate helm/recstream/values.schema.json.

The chart's own value groups are declared below; `serve.config` is the JSON schema of
services/config.py ServeConfig itself (pydantic's, with its bounds, enums and
additionalProperties: false), so the chart refuses at `helm install` time what the Serve
application would refuse when it loads. Run `python -m deploy.k8s.values_schema` after editing
this file or ServeConfig; tests/unit/helm/test_chart.py checks that the file is current.

Helm validates with JSON Schema 2020-12 and names the failing path in its message, e.g.
`at '/serve/config/coarse_top_k': maximum: got 100001, want 100000`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parents[2] / "helm" / "recstream"
SCHEMA_FILE = CHART / "values.schema.json"


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A closed object: unknown keys are refused (a typo fails instead of being ignored)."""
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    out.update(extra)
    return out


def _str(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def _int(minimum: int | None = None, maximum: int | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", **kw}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


BOOL = {"type": "boolean"}
MAP = {"type": "object"}  # free-form Kubernetes fields (nodeSelector, affinity, annotations, ...)
LIST = {"type": "array"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$"}, {"type": "number", "minimum": 0}]}
RESOURCES = _obj({"requests": {"type": "object", "additionalProperties": QUANTITY},
                  "limits": {"type": "object", "additionalProperties": QUANTITY}})
PORTS = {"type": "array", "items": _int(1, 65535), "minItems": 1}
DNS_LABEL = _str(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=63)
TOPIC = _str(pattern=r"^[a-zA-Z0-9._-]{1,249}$")
IMAGE_REF = _str(minLength=1, pattern=r"^[^\s]+$")
PLACEMENT = {"nodeSelector": STR_MAP, "tolerations": LIST, "affinity": MAP}


def _ray_group(workers: bool) -> dict[str, Any]:
    props: dict[str, Any] = {"resources": RESOURCES, "shmSizeLimit": QUANTITY, **PLACEMENT}
    if workers:
        props |= {"replicas": _int(0, 1000), "minReplicas": _int(0, 1000), "maxReplicas": _int(1, 1000)}
    else:
        props |= {"numCpus": {"type": "number", "minimum": 0, "maximum": 1024}}
    return _obj(props)


def _processor(extra: dict[str, Any] | None = None, enabled: bool = True) -> dict[str, Any]:
    props: dict[str, Any] = {"replicas": _int(0, 1024), "resources": RESOURCES, **(extra or {})}
    if enabled:
        props["enabled"] = BOOL
    return _obj(props)


def chart_schema(serve_config: dict[str, Any]) -> dict[str, Any]:
    """The values schema, with ServeConfig's JSON schema (`serve_config`) under serve.config."""
    defs = dict(serve_config.pop("$defs", {}))
    defs["ServeConfig"] = serve_config
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "recstream Helm chart values",
        **_obj({
            "image": _obj({"repository": IMAGE_REF, "tag": IMAGE_REF, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                           "cudaRepository": IMAGE_REF, "cudaTag": IMAGE_REF}, ["repository", "tag"]),
            "imagePullSecrets": {"type": "array", "items": _obj({"name": DNS_LABEL}, ["name"])},
            "nameOverride": _str(maxLength=40), "fullnameOverride": _str(maxLength=40),
            "commonLabels": STR_MAP,
            "kafka": _obj({
                "bootstrap": _str(pattern=r"^$|^[^,:\s]+:[0-9]{1,5}(,[^,:\s]+:[0-9]{1,5})*$",
                                  description="host:port[,host:port]"),
                "topics": _obj({"events": TOPIC, "dlq": TOPIC, "impressions": TOPIC, "partitions": _int(1, 1024)}),
                # recstream/settings.py kafka_replication_factor, kafka_min_insync_replicas, kafka_acks
                "replication": _obj({
                    "factor": {"anyOf": [{"type": "null"}, _int(1, 32)],
                               "description": "RECSTREAM_KAFKA_REPLICATION_FACTOR; null: min(3, brokers)"},
                    "minInsyncReplicas": {"anyOf": [{"type": "null"}, _int(1, 32)],
                                          "description": "RECSTREAM_KAFKA_MIN_INSYNC_REPLICAS; null: 2 from a factor of 3 on"},
                    "acks": {"enum": ["all", "1", 1], "description": "RECSTREAM_KAFKA_ACKS"},
                }),
                "networkPeers": LIST, "ports": PORTS,
                "dev": _obj({"enabled": BOOL, "image": IMAGE_REF}),
            }),
            "redis": _obj({
                "url": _str(pattern=r"^$|^(redis|rediss|unix)://"),
                "existingSecret": _str(pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
                "existingSecretKey": _str(minLength=1), "prefix": _str(minLength=1, maxLength=32, pattern=r"^[A-Za-z0-9_-]+$"),
                "cluster": _obj({"nodes": {"type": "array", "uniqueItems": True,
                                           "items": _str(pattern=r"^[^,:\s]+:[0-9]{1,5}$", description="host:port"),
                                           "description": "Redis Cluster seed nodes: RECSTREAM_REDIS_URL=redis+cluster://<nodes, comma-joined>"}}),
                "networkPeers": LIST, "ports": PORTS,
                "dev": _obj({"enabled": BOOL, "image": IMAGE_REF}),
            }),
            "artifacts": _obj({
                "source": {"enum": ["volume", "objectStore"]},
                "volume": _obj({"claimName": _str(), "subPath": _str(pattern=r"^$|^[^/].*$")}),
                "objectStore": _obj({
                    "url": _str(pattern=r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", description="s3://bucket/prefix"),
                    "endpoint": _str(pattern=r"^$|^https?://"), "region": _str(),
                    "existingSecret": _str(), "accessKeyId": _str(), "secretAccessKey": _str(),
                    "syncIntervalS": _int(5, 86400), "image": IMAGE_REF, "networkPeers": LIST, "ports": PORTS,
                }),
            }),
            "serve": _obj({
                "rayVersion": _str(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+"),
                "port": _int(1, 65535),
                "config": {"$ref": "#/$defs/ServeConfig"},
                "httpOptions": _obj({"request_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                                     "keep_alive_timeout_s": _int(1, 3600)}),
                # user_config is rendered from serve.config.variants: the versions have one home
                "deployments": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "not": {"required": ["user_config"]},
                    "properties": {"name": {"enum": ["ingress", "retrieval", "coarse", "ranker"]}}}},
                "service": _obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "annotations": STR_MAP}),
                "upgradeStrategy": {"enum": ["NewCluster", "None"]},
                "deploymentUnhealthySecondThreshold": _int(1, 86400),
                "head": _ray_group(False),
                "cpuWorkers": _ray_group(True),
                "autoscaling": BOOL,
                "podDisruptionBudget": _obj({"enabled": BOOL, "maxUnavailable": _int(0)}),
            }),
            "gpu": _obj({
                "enabled": BOOL, "replicas": _int(0, 1000), "minReplicas": _int(0, 1000), "maxReplicas": _int(1, 1000),
                "gpusPerPod": _int(1, 16),
                "ranker": _obj({"numGpus": {"type": "number", "exclusiveMinimum": 0, "maximum": 8}}),
                "resources": RESOURCES, "shmSizeLimit": QUANTITY, **PLACEMENT,
            }),
            "processors": _obj({
                "metricsPort": _int(1024, 65535),
                "popularity": _processor(),
                "featureWriter": _processor({"publish": {"enum": ["inline", "separate"]}}),
                # One publisher drains the writer's outbox; a second would publish rows twice.
                "featurePublisher": _processor({"replicas": _int(0, 1)}, enabled=False),
                "bseEncoder": _processor({"maxSeqLen": _int(1, 1_000_000)}),
                **PLACEMENT,
                "podDisruptionBudget": _obj({"enabled": BOOL, "maxUnavailable": _int(0)}),
            }),
            "bse": _obj({
                "modelVersion": _str(maxLength=128, pattern=r"^[^/\s]*$"),
                "rebuild": _obj({"enabled": BOOL, "batchUsers": _int(1, 100_000), "resources": RESOURCES}),
            }),
            "jobs": _obj({"createTopics": _obj({"enabled": BOOL}), "feastApply": _obj({"enabled": BOOL}),
                          "backoffLimit": _int(0, 100), "activeDeadlineSeconds": _int(60), "resources": RESOURCES}),
            "feast": _obj({"claimName": _str()}),
            "metrics": _obj({
                "scrapeAnnotations": BOOL,
                "serviceMonitor": _obj({"enabled": BOOL, "interval": _str(pattern=r"^[0-9]+(ms|s|m|h)$"), "labels": STR_MAP}),
                "prometheusRule": _obj({"enabled": BOOL, "labels": STR_MAP}),
                "grafanaDashboard": _obj({"enabled": BOOL, "labels": STR_MAP}),
            }),
            "networkPolicy": _obj({"enabled": BOOL, "serveFrom": LIST, "metricsFrom": LIST, "dns": LIST}),
            "serviceAccount": _obj({"create": BOOL, "name": _str(), "annotations": STR_MAP}),
            # Non-root is not optional: the images run as uid 10001 and the chart's pods say so.
            "podSecurityContext": {"type": "object", "properties": {"runAsNonRoot": {"const": True},
                                                                    "runAsUser": _int(1)}},
            "containerSecurityContext": {"type": "object", "properties": {
                "allowPrivilegeEscalation": {"const": False}, "runAsNonRoot": {"const": True},
                "privileged": {"const": False}}},
            "podAnnotations": STR_MAP, "podLabels": STR_MAP,
            "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                    "properties": {"name": _str(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")}}},
        }),
        "$defs": defs,
    }


def build() -> dict[str, Any]:
    from services.config import ServeConfig  # the one import from outside deploy/: the schema is ServeConfig's

    return chart_schema(ServeConfig.model_json_schema())


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")
