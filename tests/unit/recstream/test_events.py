import json

import pytest

from recstream.errors import InvalidEvent
from recstream.events import Event, EventType, ImpressionLog, SlateItem, parse_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}


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
