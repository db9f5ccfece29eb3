"""HTTP hardening of the ingress: a body limit and a body deadline answered before parsing, one
strict JSON rule, 422s that name the field without echoing the input, and /docs served offline
from the swagger-ui-bundle package.

`install_http_hardening(api, max_body_bytes)` is called once, right after the FastAPI app is
created. It replaces FastAPI's own docs routes (which load Swagger UI from a CDN) whatever
`docs_url`/`redoc_url` the app was created with, so the caller needs no special arguments.

The body limit. A request whose Content-Length exceeds it gets 413 before any byte of the body
is read; a body without one (chunked, streamed) is counted while it is read and stopped with 413
as soon as it passes the limit, so no more than the limit is ever buffered. The body deadline: a
body not complete within `body_read_timeout_ms` gets 408 and the connection is closed, so a
stalled upload costs its own slot for that long and nothing more. The strict JSON rule
(recstream/strict_json.py: no duplicate keys, no NaN/Infinity, no lone surrogates) is applied to
the buffered body before FastAPI parses it with the stdlib, which accepts all three; every error
body is built from escaped, truncated text, so it always serialises. Ray Serve copies the
app into each replica when the ingress class is decorated, so a per-deployment limit cannot be
set on the app object the replica serves; `set_max_body_bytes(n)`, called in the ingress
replica's constructor, sets it for the process (one ingress per replica process).

Swagger UI from swagger-ui-bundle is 4.15, which renders OpenAPI 3.0 only; FastAPI writes 3.1.
The docs page therefore loads `/docs/openapi-3.0.json`, the same document labelled 3.0.3 with the
3.1-only constructs it uses rewritten (`anyOf [X, null]` -> `nullable`, `const` -> `enum`,
`examples` -> `example`); `/openapi.json` itself is unchanged.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recstream.ids import error_message
from recstream.strict_json import StrictJsonError, loads_strict, safe_text
from services import metrics as m

log = logging.getLogger(__name__)

__all__ = ["install_http_hardening", "set_max_body_bytes", "set_body_read_timeout_ms", "DEFAULT_MAX_BODY_BYTES",
           "DEFAULT_BODY_READ_TIMEOUT_MS"]

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_BODY_READ_TIMEOUT_MS = 5000.0
# How much of an offending value a 422 quotes back, and how many errors it lists.
_INPUT_ECHO_CHARS = 64
_MAX_ERRORS = 20
_DOCS_STATIC = "/docs/static"
_DOCS_SPEC = "/docs/openapi-3.0.json"

_process_limit: int | None = None
_process_body_timeout_ms: float = DEFAULT_BODY_READ_TIMEOUT_MS


def set_max_body_bytes(max_body_bytes: int | None) -> None:
    """Set the body limit for every hardened app in this process (None: back to each app's own).
    The ingress replica calls it with its ServeConfig.max_body_bytes."""
    global _process_limit
    if max_body_bytes is not None and (isinstance(max_body_bytes, bool) or max_body_bytes < 1):
        raise ValueError(f"max_body_bytes ({max_body_bytes!r}) must be a positive int")
    _process_limit = max_body_bytes


def set_body_read_timeout_ms(timeout_ms: float) -> None:
    """How long a request body may take to arrive in this process (408 after it). The ingress
    replica calls it with its ServeConfig.body_read_timeout_ms."""
    global _process_body_timeout_ms
    if isinstance(timeout_ms, bool) or not timeout_ms > 0 or not math.isfinite(timeout_ms):
        raise ValueError(f"body_read_timeout_ms ({timeout_ms!r}) must be a positive finite number")
    _process_body_timeout_ms = float(timeout_ms)


def install_http_hardening(api: FastAPI, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Add the body limit, the non-echoing 422 handler and offline /docs to `api`.

    Args:
        api: the ingress app; created with any docs_url/redoc_url (their routes are replaced).
        max_body_bytes: largest request body accepted (413 above it), unless the process limit
            (`set_max_body_bytes`) is set.
    """
    if isinstance(max_body_bytes, bool) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes ({max_body_bytes!r}) must be a positive int")
    api.add_middleware(_BodyLimitMiddleware, default_limit=max_body_bytes)
    api.add_exception_handler(RequestValidationError, _validation_error)
    _install_offline_docs(api)


# --------------------------------------------------------------------------- body limit


def _too_large_detail(size: int, limit: int, streamed: bool) -> list[dict]:
    what = "request body is larger" if streamed else f"request body is {size} bytes"
    return [{"loc": ["body"], "type": "body_too_large", "msg": f"{what}; at most {limit} bytes allowed (max_body_bytes)"}]


class _BodyTooLarge(Exception):
    """A streamed body passed the limit while the middleware read it."""

    def __init__(self, limit: int):
        super().__init__(limit)
        self.detail = _too_large_detail(0, limit, streamed=True)


async def _send_json(send: Send, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _ClientGone(Exception):
    pass


def _json_body(scope: Scope) -> bool:
    """Whether FastAPI will parse this body as JSON: no content-type, application/json or
    application/*+json (its own rule, so the strict parse covers exactly what FastAPI parses)."""
    ctype = next((v for k, v in scope.get("headers", ()) if k.lower() == b"content-type"), None)
    if ctype is None:
        return True
    main, _, sub = ctype.decode("latin-1").split(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class _BodyLimitMiddleware:
    """Pure ASGI, so it sees the raw `receive` stream before Starlette or FastAPI buffer it.

    A body-carrying request (not GET/HEAD/OPTIONS) is read here whole, under the process's body
    deadline and size limit, then parsed by the strict JSON rule (no duplicate keys, no
    NaN/Infinity, no lone surrogates) before any route sees it; the route reads the buffered copy.
    A client that declares a body and stalls therefore holds its slot at most the deadline, and
    gets 408 with the connection closed."""

    def __init__(self, app: ASGIApp, default_limit: int):
        self.app = app
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = _process_limit or self.default_limit
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            try:
                size = int(declared[0])
                if size < 0:
                    raise ValueError
            except ValueError:
                await _send_json(send, 400, {"detail": [{"loc": ["header", "content-length"], "type": "invalid",
                                                         "msg": "Content-Length is not a non-negative integer"}]})
                return
            if size > limit:
                await _send_json(send, 413, {"detail": _too_large_detail(size, limit, streamed=False)})
                return
        timeout_ms = _process_body_timeout_ms
        try:
            body = await asyncio.wait_for(_read_body(receive, limit), timeout_ms / 1000)
        except asyncio.TimeoutError:
            m.BODY_TIMEOUTS.inc()
            await _send_json(send, 408, {"detail": [{"loc": ["body"], "type": "body_timeout",
                                                     "msg": f"request body not received within {timeout_ms:g} ms "
                                                            "(body_read_timeout_ms)"}]})
            return
        except _BodyTooLarge as e:
            await _send_json(send, 413, {"detail": e.detail})
            return
        except _ClientGone:
            return
        if body and _json_body(scope):
            try:
                loads_strict(body)
            except StrictJsonError as e:
                # loc and msg quote input only through quote_input already: safe as they are
                await _send_json(send, 422, {"detail": [{"loc": ["body", *e.loc], "type": e.kind, "msg": e.msg}]})
                return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, as the server sends it

        await self.app(scope, replay, send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# --------------------------------------------------------------------------- 422


def _safe_loc(part: Any) -> Any:
    return part if isinstance(part, int) and not isinstance(part, bool) else safe_text(str(part), _INPUT_ECHO_CHARS)


def _short(value: Any) -> Any:
    """A value safe to quote back: short scalars as they are, long strings cut and escaped,
    containers, big and non-finite numbers dropped (None)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return safe_text(value, _INPUT_ECHO_CHARS)
    return None


def safe_errors(errors: list[dict]) -> list[dict]:
    """Validation errors as JSON-safe entries with `loc`, `type`, `msg` and a short `input`: the
    field is named, a 20 MB value is not sent back (a dict key in `loc` is cut the same way)."""
    out = []
    for err in errors[:_MAX_ERRORS]:
        entry = {"loc": [_safe_loc(p) for p in err.get("loc", ())],
                 "type": err.get("type", "invalid"), "msg": safe_text(error_message(err), 300)}
        if "input" in err and _short(err["input"]) is not None:
            entry["input"] = _short(err["input"])
        out.append(entry)
    if len(errors) > _MAX_ERRORS:
        out.append({"loc": [], "type": "too_many_errors", "msg": f"and {len(errors) - _MAX_ERRORS} more errors"})
    return out


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": safe_errors(list(exc.errors()))})


# --------------------------------------------------------------------------- offline docs


def _as_openapi_30(spec: dict) -> dict:
    """The OpenAPI 3.1 document FastAPI writes, in the 3.0 dialect Swagger UI 4 renders."""

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: fix(v) for k, v in node.items()}
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and {"type": "null"} in options:
                rest = [o for o in options if o != {"type": "null"}]
                node.pop(key)
                if len(rest) == 1 and "$ref" in rest[0]:
                    node["allOf"] = rest  # 3.0 ignores siblings of a $ref
                elif len(rest) == 1:
                    node.update({**rest[0], **{k: v for k, v in node.items() if k not in rest[0]}})
                else:
                    node[key] = rest
                node["nullable"] = True
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if isinstance(node.get("examples"), list) and "type" in node:
            examples = node.pop("examples")
            if examples:
                node["example"] = examples[0]
        return node

    out = fix(copy.deepcopy(spec))
    out["openapi"] = "3.0.3"
    return out


def _install_offline_docs(api: FastAPI) -> None:
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    # FastAPI added its CDN-backed docs routes in its constructor; take them out.
    default_paths = {p for p in (api.docs_url, api.redoc_url, api.swagger_ui_oauth2_redirect_url) if p}
    api.router.routes[:] = [r for r in api.router.routes if getattr(r, "path", None) not in default_paths]
    api.docs_url, api.redoc_url = "/docs", None  # Ray Serve logs docs_url as the docs address
    oauth2_path = api.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    if api.openapi_url is None:
        return  # no schema, no docs
    api.mount(_DOCS_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-static")
    async def openapi_30(req: Request) -> JSONResponse:  # not cached: the ingress's schema follows its config
        return JSONResponse(_as_openapi_30(api.openapi()))

    async def docs(req: Request) -> HTMLResponse:
        root = req.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + _DOCS_SPEC, title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{root}{_DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_DOCS_STATIC}/favicon-32x32.png",
            oauth2_redirect_url=root + oauth2_path, init_oauth=api.swagger_ui_init_oauth,
            swagger_ui_parameters=api.swagger_ui_parameters)

    async def oauth2_redirect(req: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    api.add_route(_DOCS_SPEC, openapi_30, include_in_schema=False)
    api.add_route("/docs", docs, include_in_schema=False)
    api.add_route(oauth2_path, oauth2_redirect, include_in_schema=False)
