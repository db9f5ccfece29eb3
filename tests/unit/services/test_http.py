"""services/http.py and the request models (issue 9, defects 2, 3 and 7's /docs), with FastAPI's
TestClient: no Ray, no servers."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from recstream.events import Event
from services import http
from services.api import RecommendRequest, ScoreRequest
from services.http import (DEFAULT_BODY_READ_TIMEOUT_MS, install_http_hardening, set_body_read_timeout_ms,
                           set_max_body_bytes)

LIMIT = 10_000


def _app(limit: int = LIMIT) -> tuple[FastAPI, list]:
    api = FastAPI(title="t")  # default docs_url/redoc_url on purpose: the install replaces them
    install_http_hardening(api, limit)
    calls: list = []

    @api.post("/v1/recommend")
    async def recommend(req: RecommendRequest) -> dict:
        calls.append(req)
        return req.model_dump()

    @api.post("/v1/score")
    async def score(req: ScoreRequest) -> dict:
        calls.append(req)
        return req.model_dump()

    return api, calls


@pytest.fixture
def client():
    api, calls = _app()
    with TestClient(api) as c:
        c.calls = calls
        yield c


@pytest.fixture(autouse=True)
def _no_process_limit():
    yield
    set_max_body_bytes(None)
    set_body_read_timeout_ms(DEFAULT_BODY_READ_TIMEOUT_MS)


# --------------------------------------------------------------------------- body limit


def test_a_body_over_the_limit_is_413_before_parsing(client):
    body = json.dumps({"user_id": "u", "k": 5, "exclude": ["x" * 100] * 1000}).encode()  # ~100 KB
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    [d] = r.json()["detail"]
    assert d["type"] == "body_too_large" and f"at most {LIMIT}" in d["msg"]
    assert client.calls == []


def test_a_chunked_body_over_the_limit_is_413_while_it_is_read(client):
    sent = []

    def chunks():  # no Content-Length: the client streams with Transfer-Encoding: chunked
        for i in range(1000):
            sent.append(i)
            yield b" " * 1000

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"
    assert client.calls == []


def test_a_chunked_body_within_the_limit_is_served(client):
    body = json.dumps({"user_id": "u", "k": 3}).encode()
    r = client.post("/v1/recommend", content=iter([body[:5], body[5:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["k"] == 3


def test_a_body_at_the_limit_is_served():
    api, _ = _app(limit=200)
    body = json.dumps({"user_id": "u", "k": 2}).encode()
    body += b" " * (200 - len(body))
    with TestClient(api) as c:
        assert c.post("/v1/recommend", content=body, headers={"content-type": "application/json"}).status_code == 200
        assert c.post("/v1/recommend", content=body + b" ",
                      headers={"content-type": "application/json"}).status_code == 413


def test_the_process_limit_set_by_the_ingress_wins(client):
    set_max_body_bytes(50)
    r = client.post("/v1/recommend", json={"user_id": "u", "k": 5, "context": {"page": "x" * 60}})
    assert r.status_code == 413 and "at most 50" in r.json()["detail"][0]["msg"]
    set_max_body_bytes(None)
    assert client.post("/v1/recommend", json={"user_id": "u", "k": 5}).status_code == 200


def test_a_bad_content_length_is_400(client):
    r = client.post("/v1/recommend", content=b"{}", headers={"content-length": "-5", "content-type": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize("limit", [0, -1, True])
def test_the_limit_must_be_positive(limit):
    with pytest.raises(ValueError, match="max_body_bytes"):
        install_http_hardening(FastAPI(), limit)


# --------------------------------------------------------------------------- 422s


def test_a_422_names_the_field_and_does_not_echo_a_huge_value():
    api, _ = _app(limit=10_000_000)
    with TestClient(api) as c:
        r = c.post("/v1/recommend", json={"user_id": "x" * 2_000_000, "k": 5})
    assert r.status_code == 422
    assert len(r.content) < 1000
    [d] = r.json()["detail"]
    assert d["loc"] == ["body", "user_id"] and len(d["input"]) <= 70


def test_a_huge_context_key_is_cut_in_the_loc_too():
    api, _ = _app(limit=10_000_000)
    with TestClient(api) as c:
        r = c.post("/v1/recommend", json={"user_id": "u", "context": {"k" * 500_000: "v"}})
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"][0]["loc"][:2] == ["body", "context"]


@pytest.mark.parametrize("body,field", [
    ({"user_id": "u", "k": True}, "k"),  # was taken as k=1
    ({"user_id": "u", "k": "5"}, "k"),
    ({"user_id": "u", "k": 5.5}, "k"),
    ({"user_id": "u", "k": 1e300}, "k"),
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": 10**6}, "k"),
    ({"user_id": "   ", "k": 5}, "user_id"),  # was accepted by the API, rejected by the stream
    ({"user_id": "u\x00", "k": 5}, "user_id"),  # was accepted by both
    ({"user_id": "u\n1", "k": 5}, "user_id"),
    ({"user_id": "x" * 129, "k": 5}, "user_id"),
    ({"user_id": 7, "k": 5}, "user_id"),
    ({"user_id": "u", "context": {str(i): "x" for i in range(33)}}, "context"),  # events cap it at 32
    ({"user_id": "u", "context": {"page": "x" * 257}}, "context"),
    ({"user_id": "u", "context": {"page": 3}}, "context"),
    ({"user_id": "u", "exclude": ["x" * 129]}, "exclude"),  # entries had no length limit
    ({"user_id": "u", "exclude": [""]}, "exclude"),
    ({"user_id": "u", "exclude": ["a\x00"]}, "exclude"),
    ({"user_id": "u", "extra": 1}, "extra"),
])
def test_recommend_requests_are_strict_and_capped(client, body, field):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422, r.text
    assert any(field in d["loc"] for d in r.json()["detail"]), r.json()
    assert client.calls == []


def test_an_integral_json_number_is_the_integer_as_the_openapi_schema_says(client):
    r = client.post("/v1/recommend", json={"user_id": "u", "k": 5.0})  # JSON Schema: 5.0 is an integer
    assert r.status_code == 200 and r.json()["k"] == 5 and type(client.calls[0].k) is int


def test_a_control_character_reads_as_the_rule_not_a_regex(client):
    r = client.post("/v1/recommend", json={"user_id": "u\x00", "k": 5})
    assert r.json()["detail"][0]["msg"].startswith("must not contain control characters")


@pytest.mark.parametrize("body,field", [
    ({"user_id": "u", "item_ids": []}, "item_ids"),
    ({"user_id": "u", "item_ids": ["a", " "]}, "item_ids"),
    ({"user_id": "u", "item_ids": ["a\x00"]}, "item_ids"),
    ({"user_id": " ", "item_ids": ["a"]}, "user_id"),
    ({"user_id": "u", "item_ids": "a"}, "item_ids"),
])
def test_score_requests_use_the_same_rules(client, body, field):
    r = client.post("/v1/score", json=body)
    assert r.status_code == 422 and any(field in d["loc"] for d in r.json()["detail"])


def test_score_item_ids_have_a_hard_cap():
    from services.api import SCORE_ITEMS_MAX

    with pytest.raises(ValueError, match="item_ids"):
        ScoreRequest(user_id="u", item_ids=["i"] * (SCORE_ITEMS_MAX + 1))


def test_valid_requests_are_served_with_stripped_ids(client):
    r = client.post("/v1/recommend", json={"user_id": " u1 ", "k": 5, "context": {"page": "home"}, "exclude": ["i1"]})
    assert r.status_code == 200 and r.json()["user_id"] == "u1"
    assert client.post("/v1/score", json={"user_id": "u1", "item_ids": ["i1", "i2"]}).status_code == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"user_id": "u", "k": 1' + b"0" * 5000 + b"}", b"\xff\xfe", b"{"])
def test_hostile_json_is_a_4xx_not_a_5xx(client, body):
    r = client.post("/v1/recommend", content=body[:LIMIT], headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and len(r.content) < 1000


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140) | st.sampled_from(["u\x00", " ", "\x85", "a" * 128, "a" * 129, " a ", "\u2028", "a\x1c"]))
def test_the_stream_and_the_api_accept_the_same_user_ids(value):
    def accepts(make) -> bool:
        try:
            make()
            return True
        except ValueError:
            return False

    stream = accepts(lambda: Event(event_id="e", user_id=value, item_id="i", type="click", ts=1_700_000_000_000))
    api = accepts(lambda: RecommendRequest(user_id=value))
    score = accepts(lambda: ScoreRequest(user_id="u", item_ids=[value]))
    assert stream == api == score, repr(value)


# --------------------------------------------------------------------------- /docs


def test_docs_are_served_from_the_package_not_a_cdn(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert "cdn" not in r.text and "https://" not in r.text
    assert "/docs/static/swagger-ui-bundle.js" in r.text and http._DOCS_SPEC in r.text
    js = client.get("/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs/static/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_the_docs_spec_is_openapi_30_for_the_bundled_swagger_ui(client):
    spec = client.get(http._DOCS_SPEC).json()
    assert spec["openapi"] == "3.0.3"
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    text = json.dumps(spec)
    assert '"type": "null"' not in text and '"const"' not in text
    ctx = spec["components"]["schemas"]["RecommendRequest"]["properties"]["context"]
    assert ctx["nullable"] is True and ctx["type"] == "object"
    assert "/v1/recommend" in spec["paths"]


# --------------------------------------------------------------------------- hostile values, stalled bodies


def _serialisable(r) -> dict:
    """The error body, which must be JSON the client can read back as UTF-8."""
    body = r.json()
    json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return body


@pytest.mark.parametrize("path,raw,loc,kind", [
    ("/v1/recommend", b'{"user_id":"u1","k":Infinity}', ["body", "k"], "non_finite_number"),
    ("/v1/recommend", b'{"user_id":"u1","k":-Infinity}', ["body", "k"], "non_finite_number"),
    ("/v1/recommend", b'{"user_id":"u1","k":NaN}', ["body", "k"], "non_finite_number"),
    ("/v1/recommend", b'{"user_id":"u1","k":1e999}', ["body", "k"], "non_finite_number"),
    ("/v1/score", b'{"user_id":"u1","item_ids":["a"],"x":NaN}', ["body", "x"], "non_finite_number"),
    ("/v1/recommend", b'{"user_id":"\\ud800","k":10}', ["body", "user_id"], "lone_surrogate"),
    ("/v1/recommend", b'{"user_id":"u1","context":{"page":"\\udfff"}}', ["body", "context", "page"], "lone_surrogate"),
    ("/v1/recommend", b'{"user_id":"u2","k":3,"user_id":"other"}', ["body", "user_id"], "duplicate_key"),
    ("/v1/recommend", b'{"user_id":"u2","context":{"a":"1","a":"2"}}', ["body", "context", "a"], "duplicate_key"),
])
def test_hostile_numbers_surrogates_and_duplicate_keys_are_a_422_naming_the_field(client, path, raw, loc, kind):
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [d] = _serialisable(r)["detail"]
    assert d["loc"] == loc and d["type"] == kind, d
    assert client.calls == []


@pytest.mark.parametrize("user_id", ["u\u202e2", "\u200b", "\ufeffu", "u\u2066x", "\U000e0001", "u\u0378"])
def test_lookalike_ids_are_refused_with_a_body_that_serialises(client, user_id):
    r = client.post("/v1/recommend", json={"user_id": user_id, "k": 3})
    assert r.status_code == 422, r.text
    assert _serialisable(r)["detail"][0]["loc"] == ["body", "user_id"]


def test_the_strict_rule_covers_bodies_without_a_content_type_too(client):
    r = client.post("/v1/recommend", content=b'{"user_id":"u1","k":NaN}')
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "non_finite_number"


_ANY_TEXT = st.text(st.characters(exclude_categories=()))  # lone surrogates, controls and format characters too
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT.filter(lambda k: len(k) < 9),
                                                                                  inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(["/v1/recommend", "/v1/score"]),
       body=st.dictionaries(st.sampled_from(["user_id", "k", "context", "exclude", "item_ids", "x"]), _JSON, max_size=5))
def test_no_json_value_in_any_field_gets_a_5xx(path, body):
    api, _ = _app()
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    with TestClient(api) as c:
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        _serialisable(r)


def _asgi_post(api, chunks: list[bytes], declared: int, stall: bool) -> list[dict]:
    """Drive the ASGI app directly: send `chunks`, then stall (never send the rest) or finish."""
    import asyncio

    sent: list[dict] = []

    async def run():
        queue = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        if not stall:
            queue.append({"type": "http.request", "body": b"", "more_body": False})

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)  # the client never sends the rest

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/recommend", "raw_path": b"/v1/recommend",
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
                 "http_version": "1.1", "asgi": {"version": "3.0"},
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(declared).encode())]}
        await asyncio.wait_for(api(scope, receive, send), 10)

    asyncio.run(run())
    return sent


def test_a_stalled_body_gets_408_and_the_connection_closed_after_the_deadline():
    api, calls = _app()
    set_body_read_timeout_ms(200)
    sent = _asgi_post(api, [b'{"user_id":'], declared=100, stall=True)
    start = sent[0]
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert json.loads(sent[1]["body"])["detail"][0]["type"] == "body_timeout"
    assert calls == []


def test_a_body_sent_in_pieces_within_the_deadline_is_served():
    api, calls = _app()
    set_body_read_timeout_ms(2000)
    body = json.dumps({"user_id": "u", "k": 4}).encode()
    sent = _asgi_post(api, [body[:3], body[3:]], declared=len(body), stall=False)
    assert sent[0]["status"] == 200 and calls[0].k == 4


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True])
def test_the_body_deadline_must_be_positive_and_finite(value):
    with pytest.raises(ValueError, match="body_read_timeout_ms"):
        set_body_read_timeout_ms(value)
