"""Running the application the way `serve deploy` does, and reloading it in place.

`recstream serve` starts a local Ray and Serve, then applies the application from a Serve config
document (services/serve_file.py) through Serve's declarative API: per-deployment settings
(`max_ongoing_requests`, autoscaling) are honoured exactly as `serve deploy` honours them, and the
model versions travel only in the deployments' `user_config`.

`recstream serve reload --config FILE` changes a running `recstream serve` in place. The serving
process owns its Ray instance (no dashboard, token-authenticated), so rather than connecting a
second driver the reload goes through the serving process itself, over files in a state
directory and a SIGHUP:

    serve-<port>.json         written at start: pid, url          (the server)
    serve-<port>.reload.json  the file to apply and a request id  (the reload command)
    serve-<port>.result.json  the outcome for that request id     (the server)

The server applies the new file with the overrides it was started with; when only user_config
changed (the usual version change), Ray Serve calls `reconfigure` on the live replicas and every
request is answered throughout. A change of `args` is applied too, but Ray Serve then replaces
the replicas, and the result says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from recstream.errors import RecstreamError
from recstream.settings import Settings
from services.serve_file import DEFAULT_HTTP_OPTIONS, ServeFile, app_document, apply, read_serve_file

log = logging.getLogger(__name__)

APP_NAME = "recstream"
# Serve kills a proxy that is not ready within 5 s (its default), and `serve.start` then fails: seen
# on a busy 2-core host. A Ray this process starts inherits the variable.
PROXY_READY_CHECK_TIMEOUT_S = "60"


class ServeReloadError(RecstreamError):
    """A reload that could not be applied (no server on that port, a bad file, a failed deploy)."""


def start_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", PROXY_READY_CHECK_TIMEOUT_S)
        # Logical CPUs: replicas reserve fractions (ServeConfig.num_cpus), so several deployments fit on 2 cores.
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="recstream")


def http_options(sf: ServeFile) -> dict:
    return {**DEFAULT_HTTP_OPTIONS, **sf.http_options, "host": sf.config.host, "port": sf.config.port}


def deploy(settings: Settings, sf: ServeFile, name: str = APP_NAME, route_prefix: str = "/",
           timeout_s: float = 600) -> None:
    """Apply `sf` as application `name` and wait until it is RUNNING (Serve already started).

    A declarative apply replaces the whole set of declarative applications, so the others
    already running are sent again unchanged (unchanged configs are left as they are)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details().get("applications", {})
    others = [app["deployed_app_config"] for other, app in details.items()
              if other != name and app.get("source") == "declarative" and app.get("deployed_app_config")]
    apply([*others, app_document(sf.config, sf.deployments, env=settings.to_env(), name=name,
                                 route_prefix=route_prefix)])
    wait_running(name, timeout_s)


def wait_running(name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = getattr(app, "status", None)
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise ServeReloadError(f"application {name} failed to deploy: {app.message}")
        if time.monotonic() > deadline:
            raise ServeReloadError(f"application {name} not RUNNING after {timeout_s:g} s (status {status})")
        time.sleep(0.2)


def start(settings: Settings, sf: ServeFile) -> str:
    """A local Ray and Serve with `sf` applied; returns the base URL."""
    from ray import serve

    start_local_ray()
    serve.start(http_options=http_options(sf), logging_config={"log_level": "WARNING"})
    deploy(settings, sf)
    return f"http://{sf.config.host}:{sf.config.port}"


# --------------------------------------------------------------------------- reload


def _paths(state_dir: Path, port: int) -> tuple[Path, Path, Path]:
    base = state_dir / f"serve-{port}"
    return base.with_suffix(".json"), Path(f"{base}.reload.json"), Path(f"{base}.result.json")


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers never see half a file


def serve_until_stopped(settings: Settings, sf: ServeFile, overrides: dict, state_dir: Path,
                        stop: threading.Event, on_reload: Callable[[str], None] = log.info) -> None:
    """Answer reload requests (SIGHUP) for the server on sf.config.port until `stop` is set."""
    state_dir.mkdir(parents=True, exist_ok=True)
    info, request, result = _paths(state_dir, sf.config.port)
    wake = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: wake.set())  # before the info file: a reload may follow at once
    _write(info, {"pid": os.getpid(), "url": f"http://{sf.config.host}:{sf.config.port}"})
    current = sf
    try:
        while not stop.is_set():
            if not wake.wait(0.5):
                continue
            wake.clear()
            try:
                req = json.loads(request.read_text())
            except (OSError, ValueError):
                continue
            try:
                new = read_serve_file(req["path"], **overrides)
                if http_options(new) != http_options(current):
                    raise ServeReloadError("http_options differ from the running server's; they need a restart "
                                           f"(running {http_options(current)}, file {http_options(new)})")
                restarts = app_document(new.config)["args"] != app_document(current.config)["args"]
                deploy(settings, new)
                current = new
                msg = ("applied; args changed, so Ray Serve replaced the replicas" if restarts else
                       "applied in place (user_config only: the live replicas reconfigured)")
                out = {"id": req["id"], "ok": True, "message": msg,
                       "variants": {n: {s: getattr(v, s).version for s in ("retrieval", "coarse", "ranker")}
                                    for n, v in new.config.variants.items()}}
            except Exception as e:  # the server keeps serving the old config; the caller gets the reason
                out = {"id": req["id"], "ok": False, "message": f"{type(e).__name__}: {e}"}
            _write(result, out)
            on_reload(out["message"])
    finally:
        info.unlink(missing_ok=True)


def request_reload(config_path: str, port: int, state_dir: Path, timeout_s: float = 600) -> dict:
    """Ask the `recstream serve` on `port` to apply `config_path`; returns its result.

    Raises:
        ServeReloadError: no server on that port, the server refused the file, or no answer in time.
    """
    path = str(Path(config_path).resolve())
    read_serve_file(path)  # a bad file is refused here, with its reason, before the server sees it
    info, request, result = _paths(state_dir, port)
    try:
        pid = json.loads(info.read_text())["pid"]
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError) as e:
        raise ServeReloadError(f"no `recstream serve` on port {port} (looked for {info}): {e}") from None
    req_id = uuid.uuid4().hex
    _write(request, {"id": req_id, "path": path})
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            out = json.loads(result.read_text())
            if out.get("id") == req_id:
                if not out["ok"]:
                    raise ServeReloadError(f"the server kept its config: {out['message']}")
                return out
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise ServeReloadError(f"no answer from the server (pid {pid}) within {timeout_s:g} s")
