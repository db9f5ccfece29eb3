"""The ingress's OpenAPI document says what the server does (services/app.py `_openapi`): every
status with its body schema, this replica's limits, the replay header's values, and the id rule in
a regex dialect OpenAPI tools read."""

from __future__ import annotations

import json
import random
import re

import pytest

from recstream import ids


@pytest.fixture
def spec(monkeypatch):
    import services.app as app

    monkeypatch.setattr(app, "_schema_limits", {"max_k": 20, "max_exclude": 7, "max_score_items": 5,
                                                "replay_header": True, "variants": ["A", "B"]})
    return app._openapi()


def test_every_status_the_api_sends_is_documented_with_its_body(spec):
    for path in ("/v1/recommend", "/v1/score"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "408", "413", "422"}, path
        for code in ("400", "408", "413", "422"):
            assert responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_the_document_states_this_replicas_limits_and_replay_variants(spec, monkeypatch):
    req = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert req["k"]["maximum"] == 20 and req["exclude"]["maxItems"] == 7
    assert spec["components"]["schemas"]["ScoreRequest"]["properties"]["item_ids"]["maxItems"] == 5
    [header] = spec["paths"]["/v1/recommend"]["post"]["parameters"]
    assert header["name"] == "x-recstream-replay" and header["schema"]["enum"] == ["A", "B"]

    import services.app as app

    monkeypatch.setattr(app, "_schema_limits", {**app._schema_limits, "replay_header": False})
    assert app._openapi()["paths"]["/v1/recommend"]["post"]["parameters"] == []  # every value would get a 422


def test_context_keys_are_constrained_as_the_server_constrains_them(spec):
    ctx = spec["components"]["schemas"]["RecommendRequest"]["properties"]["context"]["anyOf"][0]
    assert "patternProperties" not in ctx  # under it, a key missing the pattern would be unconstrained
    assert ctx["propertyNames"]["pattern"] == ids.explicit_pattern(ids.SAFE_TEXT_PATTERN)
    assert ctx["additionalProperties"]["type"] == "string"


def test_the_id_pattern_is_spelled_with_explicit_ranges_that_equal_the_servers_rule(spec):
    text = json.dumps(spec, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # the document is served as UTF-8: no literal surrogate in it
    assert r"\p{" not in text
    patterns = {p for p in re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', json.dumps(spec))}
    assert patterns, "the id fields carry a pattern"
    rule = re.compile(ids.explicit_pattern(ids.SAFE_TEXT_PATTERN))
    rng = random.Random(0)
    for cp in [*range(0, 0x3000), *rng.sample(range(0x3000, 0x110000), 20_000)]:
        if 0xD800 <= cp <= 0xDFFF:
            continue  # no UTF-8 text holds one; the strict JSON rule refuses the escape (below)
        ch = chr(cp)
        assert bool(rule.match(ch)) == ids.is_valid_id(f"a{ch}a"), hex(cp)
    from recstream.strict_json import StrictJsonError, loads_strict

    with pytest.raises(StrictJsonError, match="surrogate"):
        loads_strict(b'{"user_id": "\\ud800"}')
