"""The one id rule (issue 20): control characters, and lookalikes besides: format characters (bidi
controls, zero-width, BOM), line/paragraph separators and unassigned code points; ordinary text
of any script stays valid."""

from __future__ import annotations

import sys
import unicodedata

from typing import Annotated

import pytest
from pydantic import StringConstraints, TypeAdapter, ValidationError

from recstream.ids import ID_MAX_LEN, ID_PATTERN, REFUSED_CATEGORIES, RULE, Id, error_message, is_valid_id

LOOKALIKES = {
    "right-to-left override inside": "u\u202e2",
    "left-to-right override": "u\u202d2",
    "right-to-left isolate": "u\u20672",
    "first strong isolate": "u\u20682",
    "pop directional isolate": "u\u20692",
    "left-to-right isolate": "\u2066u2",
    "right-to-left mark": "u2\u200f",
    "zero-width space as the whole id": "\u200b",
    "zero-width space inside": "u\u200b2",
    "zero-width joiner": "u\u200d2",
    "word joiner": "u\u20602",
    "BOM in front": "\ufeffu2",
    "BOM as the whole id": "\ufeff",
    "soft hyphen": "u\u00ad2",
    "tag character": "u\U000e00412",
    "line separator": "u\u20282",
    "paragraph separator": "u\u20292",
    "unassigned code point": "u\u03782",
    "noncharacter U+FFFF": "u\uffff",
    "noncharacter U+10FFFF": "u\U0010ffff",
    "NUL": "u\x00",
    "C1 control": "u\x85x",
}


@pytest.mark.parametrize("value", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_the_id_rule_refuses_each_lookalike_class(value):
    assert not is_valid_id(value)
    with pytest.raises(ValidationError) as ei:
        TypeAdapter(Id).validate_python(value)
    assert error_message(ei.value.errors()[0]) in (RULE, "String should have at least 1 character")


@pytest.mark.parametrize("value", ["u1", "José", "用户", "Ωμέγα-7", "user@example.org", "a b", "ü" * ID_MAX_LEN,
                                   "\U0001f600", "\u05e9\u05dc\u05d5\u05dd", "مرحبا", "  padded  "])
def test_ordinary_ids_of_any_script_stay_valid(value):
    assert is_valid_id(value)


def test_lone_surrogates_cannot_reach_the_rule():
    with pytest.raises(ValidationError) as ei:
        TypeAdapter(Id).validate_python("u\ud800")
    assert ei.value.errors()[0]["type"] == "string_unicode"


def test_the_mismatch_reads_as_the_rule_naming_every_refused_class():
    with pytest.raises(ValidationError) as ei:
        TypeAdapter(Id).validate_python("u\u202e2")
    msg = error_message(ei.value.errors()[0])
    assert msg.startswith("must not contain control characters")
    for cls in REFUSED_CATEGORIES:
        assert cls in msg
    assert "\\p{" not in msg and "^" not in msg


def _code_points():
    """All of Unicode but the surrogates, with planes 4-13 (unassigned in every version so far)
    sampled, to keep the sweep near a second."""
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF or (0x40000 <= c < 0xE0000 and c % 97):
            continue
        yield chr(c)


def test_the_regex_classes_agree_with_unicodedata_across_unicode():
    """pydantic-core's regex classes (the regex crate's tables, Unicode 16.0) against Python's
    unicodedata, over Unicode. The only disagreements allowed: code points this Python's older
    unicodedata still calls unassigned, which a newer Unicode assigned, so the rule accepts them."""
    adapter = TypeAdapter(Annotated[str, StringConstraints(pattern=ID_PATTERN)])
    disagree = []
    for ch in _code_points():
        try:
            adapter.validate_python(ch)
            accepted = True
        except ValidationError:
            accepted = False
        if accepted == (unicodedata.category(ch) in REFUSED_CATEGORIES):
            disagree.append(ch)
    assert all(unicodedata.category(ch) == "Cn" for ch in disagree), \
        [f"U+{ord(ch):04X} {unicodedata.category(ch)}" for ch in disagree if unicodedata.category(ch) != "Cn"][:10]
    # Unicode 15.0, 15.1 and 16.0 assigned 4,489 + 627 + 5,185 code points: 10,294 of them are
    # accepted here against unicodedata 14.0 (Python 3.11)
    if tuple(int(p) for p in unicodedata.unidata_version.split(".")) < (16, 0):
        assert len(disagree) <= 11_000
    # never a noncharacter: those stay unassigned in every version
    assert not [ch for ch in disagree if 0xFDD0 <= ord(ch) <= 0xFDEF or ord(ch) & 0xFFFE == 0xFFFE]
    print(f"unicodedata {unicodedata.unidata_version} (Python {sys.version_info[:2]}): {len(disagree)} code points "
          f"newer than it accepted")
