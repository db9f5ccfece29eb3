"""Property tests of the event decoder: every input either parses or raises InvalidEvent.

A stream processor routes InvalidEvent to the DLQ; anything else used to escape and stop it
(b"[" * 100000 raised RecursionError). The strategies below mix what an attacker or a broken
producer sends: deep nesting, huge numbers, invalid UTF-8, control characters in ids, random
bytes, arbitrary JSON and mutations of valid events. Run with --hypothesis-show-statistics to
see how many inputs of each kind were tried (reports/hardening.md quotes one run).
"""

from __future__ import annotations

import json
import os
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recstream.errors import InvalidEvent
from recstream.events import MAX_EVENT_BYTES, Event, parse_event
from tests.builders import GOOD

# Enough to find the old failures within a unit-test budget; RECSTREAM_FUZZ_EXAMPLES=5000 for a
# longer run (reports/hardening.md quotes one).
EXAMPLES = int(os.environ.get("RECSTREAM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


# Valid id characters: the id rule refuses Cc, Cf, Zl, Zp and Cn (recstream/ids.py); Zs is left out
# so that stripping never empties an id.
ids = st.text(min_size=1, max_size=20, alphabet=st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Cn", "Zl", "Zp", "Zs")))
valid_events = st.builds(
    lambda e, u, i, t, ts, v, pos, ctx: {"event_id": e, "user_id": u, "item_id": i, "type": t, "ts": ts, "value": v,
                                         **({"position": pos} if pos is not None else {}),
                                         **({"context": ctx} if ctx else {})},
    ids, ids, ids, st.sampled_from(["impression", "click", "like", "purchase", "rating", "view"]),
    st.integers(631_152_000_000, 4_102_444_800_000), st.floats(allow_nan=False, allow_infinity=False),
    st.none() | st.integers(0, 10_000), st.dictionaries(ids, st.text(max_size=10, alphabet="abc"), max_size=3))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@st.composite
def deep_nesting(draw) -> bytes:
    depth = draw(st.integers(1, 120_000))
    opener = draw(st.sampled_from([b"[", b'{"a":', b'{"context":', b'[{"x":', b'{"user_id":[']))
    body = opener * depth
    return body + (b"]" * depth if draw(st.booleans()) and opener == b"[" else b"")


@st.composite
def huge_numbers(draw) -> bytes:
    digits = draw(st.integers(19, 100_000))
    field = draw(st.sampled_from(["ts", "value", "position", "v"]))
    number = draw(st.sampled_from([b"1" + b"0" * digits, b"-" + b"9" * digits, b"1e" + str(digits).encode(),
                                   b"0." + b"1" * digits, b"1e-" + str(digits).encode()]))
    head = json.dumps({k: v for k, v in GOOD.items() if k != field})[:-1].encode()
    return head + b', "' + field.encode() + b'": ' + number + b"}"


@st.composite
def invalid_utf8(draw) -> bytes:
    raw = bytearray(json.dumps(draw(valid_events)).encode())
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
    at = draw(st.integers(0, len(raw)))
    return bytes(raw[:at] + bad + raw[at:])


CONTROL = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]
# Lookalikes (issue 20): bidi controls, zero-width and other format characters, separators,
# unassigned code points (in every Unicode version: U+0378, noncharacters).
LOOKALIKE = ["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u200b", "\u200c",
             "\u200d", "\u2060", "\ufeff", "\u00ad", "\U000e0041", "\u2028", "\u2029", "\u0378", "\ufdd0", "\uffff",
             "\U0010ffff"]


@st.composite
def hostile_ids(draw) -> bytes:
    """An id with a control character or a lookalike somewhere (NUL included), blank, or too long."""
    field = draw(st.sampled_from(["user_id", "item_id", "event_id", "request_id"]))
    base = draw(st.text(min_size=1, max_size=40, alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))))
    how = draw(st.sampled_from(["control", "lookalike", "blank", "long"]))
    if how in ("control", "lookalike"):
        at = draw(st.integers(0, len(base)))
        value = base[:at] + draw(st.sampled_from(CONTROL if how == "control" else LOOKALIKE)) + base[at:]
        value = "x" + value + "x"  # inside, where stripping does not remove it
    elif how == "blank":
        value = draw(st.text(min_size=1, max_size=10, alphabet=" \t\n\r\u00a0\u2003\u3000"))
    else:
        value = "x" * draw(st.integers(129, 100_000))
    return json.dumps({**GOOD, field: value}).encode()


@st.composite
def mutated_events(draw) -> bytes:
    raw = bytearray(json.dumps(draw(valid_events)).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and raw:
            del raw[at]
        elif op == "truncate":
            del raw[at:]
    return bytes(raw)


@st.composite
def duplicate_keys(draw) -> bytes:
    """A valid event with one of its keys (top level or context) given again, the second time
    possibly spelled with a \\u escape, with the same or another value."""
    obj = draw(valid_events)
    context = obj.pop("context", None) or {"k": "v"}
    where = draw(st.sampled_from(["top", "context"]))
    target = obj if where == "top" else context
    key = draw(st.sampled_from(sorted(target)))
    again = json.dumps(key, ensure_ascii=draw(st.booleans()))[1:-1]
    if draw(st.booleans()) and ord(key[0]) < 0x10000:
        again = f"\\u{ord(key[0]):04x}" + json.dumps(key[1:])[1:-1]
    dup = f'"{again}": {json.dumps(draw(st.sampled_from([target[key], "other", 1, None])))}'
    pairs = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in context.items()]
    pairs.insert(draw(st.integers(0, len(pairs))), dup) if where == "context" else None
    head = json.dumps(obj)[:-1]
    text = head + (", " + dup if where == "top" else "") + ', "context": {' + ", ".join(pairs) + "}}"
    return text.encode()


KINDS = {
    "random bytes": st.binary(max_size=512),
    "arbitrary JSON": json_values.map(lambda v: json.dumps(v).encode()),
    "deep nesting": deep_nesting(),
    "huge numbers": huge_numbers(),
    "invalid UTF-8": invalid_utf8(),
    "hostile ids": hostile_ids(),
    "duplicate keys": duplicate_keys(),
    "mutated valid event": mutated_events(),
    "oversize record": st.integers(MAX_EVENT_BYTES + 1, 4 * MAX_EVENT_BYTES).map(lambda n: b" " * n),
}


def _decode(raw: bytes) -> str:
    """The property, for one input: parses, or raises InvalidEvent with a bounded reason and the
    original bytes. Any other exception fails the test. Returns the outcome for statistics."""
    try:
        ev = parse_event(raw)
    except InvalidEvent as e:
        assert e.reason and len(e.reason) <= 1100, e.reason[:200]
        json.dumps(e.reason, ensure_ascii=False).encode("utf-8")  # a DLQ record can always carry it
        assert e.raw == raw
        return "DLQ, " + _category(e.reason)
    assert isinstance(ev, Event)
    return "parsed"


_POSITION = re.compile(r" at line \d+ column \d+")


def _category(reason: str) -> str:
    """'not UTF-8 JSON: Invalid JSON: recursion limit exceeded at line 1 column 202' ->
    'not UTF-8 JSON (recursion limit exceeded)'; 'invalid event: ts: ...' -> 'invalid event (ts)'."""
    if reason.startswith("record is"):
        return "record too large"
    head, _, rest = reason.partition(": ")
    if head == "not UTF-8 JSON":
        what = _POSITION.sub("", rest.removeprefix("Invalid JSON: "))
        return f"{head} ({what})"
    if head == "invalid event":
        return f"{head} ({rest.split(':')[0]})"
    return head


# Kinds that can never be a valid event: these must all reach the DLQ.
NEVER_VALID = {"deep nesting", "invalid UTF-8", "hostile ids", "duplicate keys", "oversize record"}


def _property_test(kind: str):
    @FUZZ
    @given(KINDS[kind])
    def test(raw: bytes) -> None:
        outcome = _decode(raw)
        event(f"{kind} -> {outcome}")
        assert kind not in NEVER_VALID or outcome != "parsed", raw[:200]

    test.__name__ = test.__qualname__ = "test_decoder_parses_or_raises_invalid_event__" + kind.replace(" ", "_").replace("-", "")
    return test


# One test per kind, so each gets its own example budget and its own line in the statistics.
for _kind in KINDS:
    _t = _property_test(_kind)
    globals()[_t.__name__] = _t


@FUZZ
@given(valid_events)
def test_valid_events_parse_and_round_trip(obj):
    ev = parse_event(json.dumps(obj).encode())
    assert parse_event(ev.to_bytes()) == ev
