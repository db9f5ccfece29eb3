"""The one definition of an identifier (`user_id`, `item_id`, `event_id`, `request_id`), shared by
the event contract and the HTTP requests (DESIGN.md, "Contracts": Identifiers).

A valid id, after stripping surrounding whitespace, is 1..ID_MAX_LEN characters, none of them
- a control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F, NUL included);
- a format character (Cf): bidi controls (U+202A-U+202E, U+2066-U+2069, U+200E/U+200F), zero-width
  characters (U+200B-U+200D, U+2060), the BOM U+FEFF, soft hyphen, tag characters...;
- a line or paragraph separator (Zl U+2028, Zp U+2029): line breaks to a log viewer, like LF;
- an unassigned code point (Cn), noncharacters such as U+FFFF included.
Ids become Redis keys, log lines, Kafka keys and text on an operator's screen: the bound keeps
one bad producer from filling Redis, the control characters and separators keep NULs and line
breaks out of keys and logs, and the format and unassigned characters keep an id from looking
like another one ("u\u202e2" renders as "u2", a zero-width space as nothing) or from rendering
differently once a font learns the code point. Ordinary letters of any script stay valid ("José",
"用户"). Lone surrogates (Cs) cannot occur: they are not valid UTF-8, the JSON parser refuses a
lone `\\ud800` escape, and pydantic-core refuses a Python str holding one (`string_unicode`).

The check runs inside pydantic-core (the Rust regex crate's `\\p{..}` classes), not in a Python
validator, so the stream's one-pass event parse stays one pass. Those classes follow the regex
crate's Unicode tables (16.0 in pydantic-core 2.50), newer than Python 3.11's `unicodedata`
(14.0): the two agree on every code point except those assigned in Unicode 15.0-16.0, which
`unicodedata` still calls Cn and this rule accepts (tests/unit/recstream/test_ids.py sweeps them all).
Context keys and values (recstream/events.py) use the same character rule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import StringConstraints, TypeAdapter, ValidationError

ID_MAX_LEN = 128

# The refused Unicode categories, as pydantic-core's regex spells them; error_message() turns a
# mismatch into the rule. (The regex crate has no Cs class: its strings cannot hold surrogates.)
REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cn")
_REFUSED = "".join(rf"\p{{{c}}}" for c in REFUSED_CATEGORIES)
SAFE_TEXT_PATTERN = rf"^[^{_REFUSED}]+$"
SAFE_TEXT_OR_EMPTY_PATTERN = rf"^[^{_REFUSED}]*$"
ID_PATTERN = SAFE_TEXT_PATTERN

RULE = ("must not contain control characters (Unicode Cc), format characters such as bidi controls, "
        "zero-width characters and U+FEFF (Cf), line or paragraph separators (Zl, Zp) or unassigned "
        "code points (Cn)")

Id = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=ID_MAX_LEN,
                                      pattern=ID_PATTERN)]


_ADAPTER = TypeAdapter(Id)


def is_valid_id(value: object) -> bool:
    """True when `value` is a str that `Id` accepts (the same rule, for code that is not a model)."""
    try:
        _ADAPTER.validate_python(value)
        return True
    except ValidationError:
        return False


def error_message(err: Mapping[str, Any]) -> str:
    """A pydantic error entry as a short human message: the pattern of a failed `Id` (or context
    key or value) reads as the rule it stands for, not as a regex. Never quotes the input."""
    if err.get("type") == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in (
            SAFE_TEXT_PATTERN, SAFE_TEXT_OR_EMPTY_PATTERN):
        return RULE
    return str(err.get("msg", "invalid"))[:200]


@functools.cache
def refused_ranges() -> tuple[tuple[int, int], ...]:
    """The code points the rule refuses, as sorted inclusive ranges, read off pydantic-core's own
    regex (so they follow its Unicode tables, not Python's), lone surrogates included.

    For documents whose regex dialect has no `\\p{..}` classes (OpenAPI consumers, schemathesis).
    Bisection over the code space with two probes, "every character accepted" (the anchored rule)
    and "some character accepted" (the bare class): about 30k validations, not 1.1 million.
    """
    every = TypeAdapter(Annotated[str, StringConstraints(pattern=SAFE_TEXT_OR_EMPTY_PATTERN)])
    some = TypeAdapter(Annotated[str, StringConstraints(pattern=rf"[^{_REFUSED}]")])

    def ok(adapter: TypeAdapter, text: str) -> bool:
        try:
            adapter.validate_python(text)
            return True
        except ValidationError:
            return False

    refused: list[tuple[int, int]] = [(0xD800, 0xDFFF)]
    todo = [(0, 0xD7FF), (0xE000, 0x10FFFF)]
    while todo:
        lo, hi = todo.pop()
        text = "".join(map(chr, range(lo, hi + 1)))
        if ok(every, text):
            continue
        if not ok(some, text):
            refused.append((lo, hi))
            continue
        mid = (lo + hi) // 2
        todo += [(lo, mid), (mid + 1, hi)]
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(refused):
        if merged and lo == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return tuple(merged)


def explicit_pattern(pattern: str) -> str:
    """SAFE_TEXT_PATTERN / SAFE_TEXT_OR_EMPTY_PATTERN spelled with explicit ranges (literal
    characters, which every regex dialect reads); any other pattern unchanged."""
    if pattern not in (SAFE_TEXT_PATTERN, SAFE_TEXT_OR_EMPTY_PATTERN):
        return pattern
    # Without the surrogates: no regex engine on the UTF-8 side (Rust's, jsonschema-rs) can name
    # them, and no UTF-8 text can hold them (the strict JSON rule refuses their escapes).
    ranges = [(a, b) for lo, hi in refused_ranges()
              for a, b in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)) if a <= b]
    cls = "".join(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in ranges)
    return f"^[^{cls}]{'+' if pattern == SAFE_TEXT_PATTERN else '*'}$"


def _class_char(cp: int) -> str:
    # The BMP as escapes (a literal "]", "\\" or "-" would break the class, and a literal surrogate
    # cannot be written as UTF-8); astral code points literal, since ECMA regexes without the u flag
    # have no escape for them.
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)
