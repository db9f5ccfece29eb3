"""recstream.strict_json (issue 20): duplicate keys, non-finite numbers and lone surrogates are
refused with a located, typed error; nothing else ever escapes; every text an error carries, and
every key in its loc, is safe to write as JSON, to a log and to Kafka."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstream.strict_json import QUOTE_MAX_CHARS, StrictJsonError, loads_strict, quote_input, safe_text


def _encodable(*values) -> None:
    json.dumps(values, ensure_ascii=False).encode("utf-8")


def _refused(raw) -> StrictJsonError:
    with pytest.raises(StrictJsonError) as ei:
        loads_strict(raw)
    e = ei.value
    _encodable(e.kind, e.msg, e.loc, str(e))
    return e


@pytest.mark.parametrize("raw,kind,loc", [
    (b'{"k": 1, "k": 2}', "duplicate_key", ("k",)),
    (b'{"user_id": "u2", "item_id": "i", "user_id": "other"}', "duplicate_key", ("user_id",)),
    (b'{"context": {"x": "1", "y": "2", "x": "3"}}', "duplicate_key", ("context", "x")),
    (b'{"k": 1, "\\u006b": 2}', "duplicate_key", ("k",)),  # the same key, escaped
    (b'[{"a": 1}, {"b": [{"c": 1, "c": 1}]}]', "duplicate_key", (1, "b", 0, "c")),
    (b'{"k": NaN}', "non_finite_number", ("k",)),
    (b'{"k": [1, Infinity]}', "non_finite_number", ("k", 1)),
    (b'{"k": -Infinity}', "non_finite_number", ("k",)),
    (b'{"k": 1e999}', "non_finite_number", ("k",)),  # overflows to inf in json.loads
    (b'{"k": -1.5e400}', "non_finite_number", ("k",)),
    (b"NaN", "non_finite_number", ()),
    (b'{"k": "\\ud800"}', "lone_surrogate", ("k",)),
    (b'{"k": "ok\\udfffok"}', "lone_surrogate", ("k",)),
    (b'{"k": "\\ude00\\ud83d"}', "lone_surrogate", ("k",)),  # a pair in the wrong order
    (b'{"context": {"\\ud800": "v"}}', "lone_surrogate", ("context", '"\\ud800"')),
    (b'["a", "\\uDBFF"]', "lone_surrogate", (1,)),
    ('{"k": "\ud800"}', "lone_surrogate", ("k",)),  # a str input holding one
    (b"", "json_invalid", ()),
    (b'{"k": 1,}', "json_invalid", ()),
    (b"\xff\xfe{}", "json_invalid", ()),
    (b'{"k": "\xed\xa0\x80"}', "json_invalid", ()),  # a surrogate as UTF-8 bytes
    (b"\xef\xbb\xbf{}", "json_invalid", ()),  # a BOM
    (b"[" * 100_000, "json_invalid", ()),
    (b'{"a":' * 50_000, "json_invalid", ()),
    (b"1" + b"0" * 5000, "json_invalid", ()),
    (b'{"k": 1} {"k": 2}', "json_invalid", ()),
])
def test_each_refusal_has_its_kind_and_loc(raw, kind, loc):
    e = _refused(raw)
    assert (e.kind, e.loc) == (kind, loc), str(e)
    assert isinstance(e, ValueError)


def test_the_message_names_the_duplicate_key():
    e = _refused(b'{"user_id": "u2", "user_id": "other"}')
    assert e.msg.startswith('duplicate key "user_id"')
    assert str(e).startswith('user_id: duplicate key "user_id"')


def test_a_hostile_key_is_escaped_and_cut_in_loc_and_msg():
    key = "\u202e" + "k" * 1000
    raw = json.dumps({"context": {key: 1}})[:-2] + ", " + json.dumps(key) + ": 2}}"
    e = _refused(raw.encode())
    assert e.kind == "duplicate_key" and e.loc[0] == "context"
    assert e.loc[1] == quote_input(key) and e.loc[1].startswith('"\\u202e') and e.loc[1].endswith('"...')
    assert e.loc[1].isascii() and len(e.loc[1]) < 100
    assert "k" * 65 not in e.msg and "k" * 65 not in str(e)


def test_valid_documents_read_as_json_loads_reads_them():
    for doc in [{}, [], {"a": [1, 2.5, -0.0, True, None, "x"], "b": {"c": "\U0001f600"}}, "s", 0, 1e308,
                {"k": "\ud83d\ude00 joined pair"}, {"": 1, " ": 2}]:
        text = json.dumps(doc)
        assert loads_strict(text) == json.loads(text)
        assert loads_strict(text.encode()) == json.loads(text)
    assert loads_strict(b'{"k": "\\ud83d\\ude00"}') == {"k": "\U0001f600"}


def test_the_error_pickles_with_its_fields():
    e = _refused(b'{"k": 1, "k": 2}')
    back = pickle.loads(pickle.dumps(e))
    assert (back.kind, back.msg, back.loc, str(back)) == (e.kind, e.msg, e.loc, str(e))


def test_quote_input_escapes_and_cuts():
    assert quote_input("abc") == '"abc"'
    assert quote_input("x" * 100) == '"' + "x" * QUOTE_MAX_CHARS + '"...'
    assert quote_input("a\u202eb\u200b\ud800\x00\x7f") == '"a\\u202eb\\u200b\\ud800\\u0000\\u007f"'
    assert quote_input(b"\x00\xff") == json.dumps(repr(b"\x00\xff"))
    assert quote_input(float("nan")) == '"nan"'
    assert quote_input("\U0001f600" * 3, max_chars=2) == '"\\ud83d\\ude00\\ud83d\\ude00"...'

    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert quote_input(Hostile()).startswith('"<unprintable Hostile')


def test_safe_text_keeps_plain_text_and_quotes_the_rest():
    assert safe_text("user_id") == "user_id" and safe_text("用户") == "用户"
    assert safe_text("u\u202e2") == '"u\\u202e2"'
    assert safe_text("line\nbreak") == '"line\\nbreak"'
    assert safe_text("k" * 65) == '"' + "k" * 64 + '"...'


# ------------------------------------------------------------------ property: never anything else

# Arbitrary strings: every code point, lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=25)


@st.composite
def json_ish(draw) -> bytes | str:
    """JSON text, made hostile: a value dumped (NaN and Infinity included, lone surrogates escaped
    or raw), optionally with a key repeated, bytes spliced in, or cut short."""
    doc = draw(json_values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    how = draw(st.sampled_from(["as is", "duplicate", "splice", "cut", "text"]))
    if how == "duplicate" and text.endswith("}") and text != "{}":
        key = json.dumps(draw(any_text))
        text = text[:-1] + f", {key}: 1, {key}: 2}}"
    elif how == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\\ud800", "NaN", "Infinity", '"k": 1, "k": 1', "[" * 2000, ",", "\ud800",
                                                 "\x00", "1e999", "9" * 5000])) + text[at:]
    elif how == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    if how == "text":
        return text  # a str input, possibly holding lone surrogates
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(json_ish() | st.binary(max_size=300) | st.text(st.characters(exclude_categories=()), max_size=300))
def test_loads_strict_returns_or_raises_strict_json_error_and_errors_always_serialise(raw):
    try:
        doc = loads_strict(raw)
    except StrictJsonError as e:
        assert e.kind in ("duplicate_key", "non_finite_number", "lone_surrogate", "json_invalid")
        _encodable(e.kind, e.msg, list(e.loc), str(e))
        assert all(isinstance(p, int) or len(p) <= 6 * QUOTE_MAX_CHARS + 5 for p in e.loc)
        assert len(e.msg) <= 1000
    else:
        # what it returns is what the stdlib returns, and it holds nothing the refusals cover
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        assert json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")
        assert doc == json.loads(text)
