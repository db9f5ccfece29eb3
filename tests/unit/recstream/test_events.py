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
