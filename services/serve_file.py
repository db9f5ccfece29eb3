"""The Ray Serve config file as recstream reads and applies it (deploy/serve/recstream.yaml).

`recstream serve --config FILE` and `serve deploy FILE` must run the same thing, so `recstream
serve` does not build the graph itself: it turns the file into the document `serve deploy` sends
and applies it through Serve's declarative API, which honours every per-deployment setting
(`max_ongoing_requests`, autoscaling) exactly as `serve deploy` does.

Versions live in `user_config` only. The file's layout:

    applications:
      - import_path: services.app:app_builder
        args: {...}                      # ServeConfig without `variants` (hashed into the code version)
        deployments:
          - name: ingress
            user_config: {variants: ...} # the same variants on every deployment of the layout
            max_ongoing_requests: ...

A version change then changes only `user_config`, and Ray Serve calls `reconfigure` on the live
replicas instead of replacing them. Variants found under `args` are refused with that reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import ServeConfig

IMPORT_PATH = "services.app:app_builder"
# A stalled upload waits on its body, not on the CPU: it costs a coroutine, so the ingress admits
# many and the body deadline (ServeConfig.body_read_timeout_ms) bounds how long each is held.
INGRESS_MAX_ONGOING_REQUESTS = 1000
# The proxy's end-to-end bound: a request still open after this gets 408 whatever holds it.
DEFAULT_HTTP_OPTIONS = {"request_timeout_s": 30.0, "keep_alive_timeout_s": 5}


class ServeFileError(ValueError):
    """A Ray Serve config file recstream cannot run; the message names the file and the part."""


@dataclass(frozen=True)
class ServeFile:
    """What recstream runs: its config (variants included), per-deployment Serve options (without
    user_config) and the proxy's http_options."""

    config: ServeConfig
    deployments: dict[str, dict] = field(default_factory=dict)
    http_options: dict = field(default_factory=dict)


def read_serve_file(path: str | Path, **overrides) -> ServeFile:
    """A Ray Serve config file, or a plain YAML of ServeConfig fields. `overrides` win over the file.

    Raises:
        ServeFileError: no recstream application, variants under `args`, deployments that
            disagree on their variants, or a deployment the layout does not run.
        pydantic.ValidationError: a ServeConfig field out of its bounds (the value is named).
        OSError: the file cannot be read.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ServeFileError(f"{path}: expected a mapping at the top level")
    if "applications" not in data:
        return ServeFile(config=ServeConfig(**{**data, **overrides}))
    apps = [a for a in data["applications"] or [] if isinstance(a, dict) and a.get("import_path") == IMPORT_PATH]
    if not apps:
        raise ServeFileError(f"{path}: no application with import_path {IMPORT_PATH}")
    app = apps[0]
    args = dict(app.get("args") or {})
    if "variants" in args:
        raise ServeFileError(f"{path}: variants belong in each deployment's user_config, not in args (Ray Serve "
                             "hashes args into the code version, so a version there restarts every replica)")
    deployments = {d["name"]: dict(d) for d in app.get("deployments") or [] if isinstance(d, dict) and "name" in d}
    variants = _variants_of(path, deployments)
    with_variants = {**args, **({"variants": variants} if variants is not None else {})}
    _check_layout(path, ServeConfig(**with_variants), deployments, variants)  # the file as `serve deploy` runs it
    config = ServeConfig(**{**with_variants, **overrides})  # a --layout override may run fewer deployments
    options = {name: {k: v for k, v in d.items() if k not in ("name", "user_config")}
               for name, d in deployments.items() if name in config.deployment_names}
    return ServeFile(config=config, deployments=options, http_options=dict(data.get("http_options") or {}))


def _check_layout(path, config: ServeConfig, deployments: dict[str, dict], variants: dict | None) -> None:
    unknown = sorted(set(deployments) - set(config.deployment_names))
    if unknown:
        raise ServeFileError(f"{path}: deployments {unknown} are not run by this layout (layout={config.layout}, "
                             f"ranker_deployment={config.ranker_deployment}: {list(config.deployment_names)})")
    without = [d for d in config.deployment_names if (deployments.get(d, {}).get("user_config") or {}).get("variants") is None]
    if variants is not None and without:
        raise ServeFileError(f"{path}: deployments {without} carry no variants in user_config; every deployment of "
                             f"the layout ({list(config.deployment_names)}) must name the same versions")


def _variants_of(path, deployments: dict[str, dict]) -> dict | None:
    found = {name: (d.get("user_config") or {}).get("variants") for name, d in deployments.items()}
    found = {name: v for name, v in found.items() if v is not None}
    distinct = {repr(v) for v in found.values()}
    if len(distinct) > 1:
        raise ServeFileError(f"{path}: deployments {sorted(found)} carry different variants in user_config; every "
                             "deployment must see the same versions (use one YAML anchor)")
    return next(iter(found.values()), None)


def app_document(config: ServeConfig, deployments: dict[str, dict] | None = None, env: dict[str, str] | None = None,
                 name: str = "recstream", route_prefix: str = "/") -> dict:
    """One entry of a Serve config's `applications`: `args` without variants, every deployment
    of the layout with the variants as its user_config (and its options from `deployments`),
    `env` (RECSTREAM_* settings) as the application's runtime_env."""
    variants = config.model_dump(mode="json")["variants"]
    opts = {"ingress": {"max_ongoing_requests": INGRESS_MAX_ONGOING_REQUESTS}}
    for dep, o in (deployments or {}).items():
        opts[dep] = {**opts.get(dep, {}), **o}
    app: dict[str, Any] = {
        "name": name, "route_prefix": route_prefix, "import_path": IMPORT_PATH,
        "args": config.model_dump(mode="json", exclude={"variants"}),
        "deployments": [{"name": dep, **copy.deepcopy(opts.get(dep, {})), "user_config": {"variants": variants}}
                        for dep in config.deployment_names],
    }
    if env:
        app["runtime_env"] = {"env_vars": dict(env)}
    return app


def apply(apps: list[dict], http_options: dict | None = None) -> None:
    """Apply applications through Serve's declarative API (what `serve deploy` does), from a
    driver connected to the cluster with Serve started. Unchanged code versions are updated in
    place; a changed user_config calls `reconfigure` on the live replicas."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    doc = {"applications": apps, **({"http_options": http_options} if http_options else {})}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(doc))
