import json

import pytest

from recstream.errors import InvalidEvent
from recstream.events import MAX_EVENT_BYTES, Event, EventType, ImpressionLog, SlateItem, parse_event
from tests.builders import GOOD



def test_round_trip():
    ev = parse_event(json.dumps(GOOD).encode())
    assert ev.type is EventType.click and ev.value == 1.0 and ev.v == 1
    assert parse_event(ev.to_bytes()) == ev


@pytest.mark.parametrize("raw,field", [
    (b"not json", "JSON"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1]", "object"),
    (json.dumps({**GOOD, "type": "clack"}).encode(), "type"),
    (json.dumps({**GOOD, "ts": 1_700_000_000}).encode(), "ts"),  # seconds, not ms
    (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "user_id"),
    (json.dumps({**GOOD, "extra": 1}).encode(), "extra"),
    (json.dumps({**GOOD, "value": "NaN"}).encode(), "value"),
    (json.dumps({**GOOD, "v": 99}).encode(), "v"),
    (json.dumps({**GOOD, "user_id": ""}).encode(), "user_id"),
    (json.dumps({**GOOD, "context": {str(i): "x" for i in range(40)}}).encode(), "context"),
    # issue 9, defect 1: these escaped parse_event as RecursionError / ValueError
    (b"[" * 100_000, "JSON"),
    (b'{"a":' * 50_000, "JSON"),
    (json.dumps(GOOD)[:-1].encode() + b', "value": 1' + b"0" * 5000 + b"}", "JSON"),
    (json.dumps(GOOD)[:-1].encode() + b', "position": 1' + b"0" * 5000 + b"}", "JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "ts"})[:-1].encode() + b', "ts": 1' + b"0" * 5000 + b"}", "JSON"),
    (json.dumps(GOOD)[:-1].encode() + b', "context": {"a": "\\ud800"}}', "JSON"),  # lone surrogate
    (json.dumps(GOOD)[:-1].encode() + b', "context": {"a": "\xed\xa0\x80"}}', "JSON"),  # surrogate as UTF-8
    (b" " * (MAX_EVENT_BYTES + 1), f"at most {MAX_EVENT_BYTES}"),
    # defect 2: one id rule
    (json.dumps({**GOOD, "user_id": "u\u0000"}).encode(), "user_id: must not contain control characters"),
    (json.dumps({**GOOD, "item_id": "a\nb"}).encode(), "item_id: must not contain control characters"),
    (json.dumps({**GOOD, "event_id": "e\u0085x"}).encode(), "event_id: must not contain control characters"),
    (json.dumps({**GOOD, "user_id": "   "}).encode(), "user_id"),
    (json.dumps({**GOOD, "user_id": "x" * 129}).encode(), "user_id"),
    (json.dumps({**GOOD, "request_id": "r\u0000"}).encode(), "request_id"),
    # defect 3's strictness, applied to the event contract too
    (json.dumps({**GOOD, "ts": True}).encode(), "ts"),
    (json.dumps({**GOOD, "ts": str(GOOD["ts"])}).encode(), "ts"),
    (json.dumps({**GOOD, "v": True}).encode(), "v"),
    (json.dumps({**GOOD, "value": "2.5"}).encode(), "value"),
    (json.dumps({**GOOD, "context": {"a": "x" * 257}}).encode(), "context.a"),
    (json.dumps({**GOOD, "context": {"k" * 65: "x"}}).encode(), "context"),
])
def test_invalid_events_name_the_problem_and_keep_the_bytes(raw, field):
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    assert field in ei.value.reason
    assert ei.value.raw == raw


def test_impression_log_validates_propensity():
    with pytest.raises(ValueError):
        SlateItem(item_id="a", position=0, score=1.0, propensity=0.0)
    log = ImpressionLog(request_id="r", user_id="u", ts=1, variant="A", model_versions={}, timings_ms={},
                        slate=[SlateItem(item_id="a", position=0, score=1.0, propensity=0.5)])
    assert json.loads(log.to_bytes())["slate"][0]["propensity"] == 0.5


def test_positive_types():
    assert Event(**{**GOOD, "type": "like"}).is_positive
    assert not Event(**{**GOOD, "type": "impression"}).is_positive


def test_ids_are_stripped_and_numbers_may_be_whole_for_a_float():
    ev = parse_event(json.dumps({**GOOD, "user_id": "  u1 ", "value": 4, "context": {"page": ""}}).encode())
    assert ev.user_id == "u1" and ev.value == 4.0 and ev.context == {"page": ""}


@pytest.mark.parametrize("raw", [None, "text \ud800", bytearray(b"{}"), memoryview(b"[")])
def test_parse_event_raises_only_invalid_event_for_any_argument(raw):
    with pytest.raises(InvalidEvent):
        parse_event(raw)


def test_reasons_never_quote_a_huge_input():
    with pytest.raises(InvalidEvent) as ei:
        parse_event(json.dumps({**GOOD, "user_id": "x" * 200_000}).encode())
    assert "user_id" in ei.value.reason and len(ei.value.reason) < 300


# --------------------------------------------------------------------------- issue 20

def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    assert ei.value.raw == raw
    json.dumps(ei.value.reason, ensure_ascii=False).encode("utf-8")  # a DLQ record can carry it
    return ei.value.reason


def _with(extra: str, base: dict = GOOD) -> bytes:
    """GOOD as JSON with `extra` (raw JSON members) appended: keys json.dumps would never repeat."""
    return (json.dumps(base)[:-1] + ", " + extra + "}").encode()


@pytest.mark.parametrize("raw,named", [
    (_with('"user_id": "other"'), 'user_id: duplicate key "user_id"'),  # the case: last one won
    (_with('"user_id": "u1"'), 'user_id: duplicate key "user_id"'),  # even with the same value
    (_with('"user\\u005fid": "other"'), 'user_id: duplicate key "user_id"'),  # spelled with an escape
    (_with('"ts" : 1700000000001'), 'ts: duplicate key "ts"'),
    (_with('"request_id": "r", "request_id": null'), 'request_id: duplicate key "request_id"'),
    (_with('"context": {"page": "a:b", "page": "c"}'), 'context.page: duplicate key "page"'),
    (_with('"context": {"a": "1", "b": "2", "\\u0061": "3"}'), 'context.a: duplicate key "a"'),
    (_with('"context": {"page": "home", " page ": "cart"}'), 'keys "page" and " page " are the same after stripping'),
    (_with('"user_id": "u\\u003a2"', {**GOOD, "user_id": "u:1"}), 'user_id: duplicate key "user_id"'),
])
def test_a_key_given_twice_is_refused_and_named(raw, named):
    assert named in _reason(raw)


@pytest.mark.parametrize("event", [
    {**GOOD, "context": {"url": "https://example.org/a?b=c", "time": "12:30", "q": 'say "hi"'}},
    {**GOOD, "user_id": "u:1", "item_id": 'i"1', "request_id": "r\\1", "context": {"a:b": "c:d"}},
    {**GOOD, "user_id": "用户", "item_id": "José", "context": {"页": "首页"}},
])
def test_colons_quotes_and_escapes_in_values_are_not_duplicates(event):
    for ensure_ascii in (True, False):
        ev = parse_event(json.dumps(event, ensure_ascii=ensure_ascii).encode())
        assert ev.user_id == event["user_id"] and ev.context == event["context"]


@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id", "request_id"])
@pytest.mark.parametrize("value", ["u\u202e2", "\u200b", "\ufeffu", "u\u0378", "u\u2028x"])
def test_lookalike_ids_go_to_the_dlq(field, value):
    assert f"{field}: must not contain control characters" in _reason(json.dumps({**GOOD, field: value}).encode())


@pytest.mark.parametrize("context", [{"page\u200b": "home"}, {"page": "ho\u202eme"}, {"\ufeff": "x"}])
def test_lookalikes_in_context_keys_and_values_go_to_the_dlq(context):
    assert "must not contain control characters" in _reason(json.dumps({**GOOD, "context": context}).encode())


@pytest.mark.parametrize("raw,kind", [
    (_with('"value": NaN'), "finite"), (_with('"value": Infinity'), "finite"), (_with('"value": -Infinity'), "finite"),
    (_with('"value": 1e999'), "finite"), (_with('"context": {"a": "\\ud800"}'), "lone surrogate"),
    (_with('"context": {"\\udfff": "a"}'), "lone surrogate"),
])
def test_non_finite_numbers_and_lone_surrogates_stay_refused(raw, kind):
    assert kind in _reason(raw)


def test_dlq_reasons_quote_at_most_64_characters_of_an_attackers_key_escaped():
    key = "\u202e" + "k" * 1000
    reason = _reason(json.dumps({**GOOD, "context": {key: "x"}}).encode())  # too long: a validation error
    assert "k" * 65 not in reason and "\\u202e" in reason and "\u202e" not in reason
    assert len(reason) < 300
    longest = "é" + "k" * 63  # a valid context key given twice: the event validates, then the duplicate shows
    reason = _reason(_with(f'"context": {{"{longest}": "1", "{longest}": "2"}}'))
    assert f'duplicate key "\\u00e9{"k" * 63}"' in reason and len(reason) < 300
    many = {**GOOD, "context": {f"{i}\u202e" + "k" * 900: "x" for i in range(40)}}  # many errors, each key cut
    assert len(_reason(json.dumps(many).encode())) <= 1000
