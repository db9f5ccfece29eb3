"""Strict JSON: `json.loads` that refuses what the stdlib and pydantic let through silently, and
the one way to quote hostile input back in an error.

`loads_strict` refuses
- an object with a duplicate key, at any level (the stdlib and pydantic keep the last one, so
  `{"user_id": "u2", ..., "user_id": "other"}` credits "other" under the Kafka key "u2");
- a non-finite number: `NaN`, `Infinity`, `-Infinity`, and a literal that overflows (`1e999`);
- a string, key or value, holding a lone surrogate (`"\\ud800"`): it cannot be encoded as UTF-8,
  so any error body, log line or Kafka record that quoted it would fail in turn.
It raises `StrictJsonError` and nothing else, whatever the input: invalid UTF-8 (only UTF-8 is
JSON on this platform, as RFC 8259 requires between systems; a BOM is refused), nesting deeper
than the interpreter's recursion limit, integers longer than Python converts (4,300 digits), are
all `json_invalid`.

Cost: the stdlib's C scanner does the parse; an object hook compares the number of pairs with
the size of the dict (one Python call per object), a float hook checks finiteness. When the text
escapes a surrogate (`\\uD8..`-`\\uDF..`, as ensure_ascii writes an emoji) or a str input holds
one, the C encoder checks the document once. The walk that locates a problem (`loc`) runs only
when there is one.

Every text in an error quotes input only through `quote_input` (escaped to ASCII, at most 64
characters of input), and every key in `loc` goes through `safe_text` (as it is when short and
printable, else quoted the same way), so an error can always be written as JSON, to a log and to
Kafka.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["StrictJsonError", "loads_strict", "quote_input", "safe_text"]

QUOTE_MAX_CHARS = 64

# A surrogate escape in JSON text (pairs included: the check after parsing decides which are lone).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # in a decoded str: pairs are already joined


class StrictJsonError(ValueError):
    """A document `loads_strict` refuses.

    Attributes:
        kind: "duplicate_key" | "non_finite_number" | "lone_surrogate" | "json_invalid".
        msg: human message; quotes input only via quote_input().
        loc: path to the offending key or value, e.g. ("k",) or ("context", "x") or ("items", 3);
            () for the whole document. String parts are safe: see safe_text().
    """

    def __init__(self, kind: str, msg: str, loc: tuple[str | int, ...] = ()):
        super().__init__(kind, msg, loc)  # args as the constructor takes them: the error pickles
        self.kind = kind
        self.msg = msg
        self.loc = loc

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.loc)
        return f"{where}: {self.msg}" if where else self.msg


def quote_input(value: object, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """`value` (a str as it is, anything else as its repr) as a JSON string literal, escaped to
    printable ASCII (lone surrogates, control, bidi and zero-width characters included), cut to
    `max_chars` characters of input with `...` after the closing quote when cut: always safe to
    put in JSON, logs and Kafka."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except Exception as e:  # a hostile __repr__ must not break an error path
        text = f"<unprintable {type(value).__name__}: {type(e).__name__}>"
    cut = text[:max_chars]
    # ensure_ascii escapes everything outside U+0020-U+007E, lone surrogates as \udXXX, without raising
    quoted = json.dumps(cut, ensure_ascii=True)
    return quoted + "..." if len(text) > max_chars else quoted


def safe_text(text: str, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """Input text to name in an error or a `loc` (an attacker's object key, an exception's
    message): as it is when it is short printable text (str.isprintable is False for Cc, Cf, Cs,
    Cn, Co, Zl, Zp and every space but U+0020), else quote_input(text)."""
    return text if len(text) <= max_chars and text.isprintable() else quote_input(text, max_chars)


class _Bad:
    """A marker the parse hooks return in place of a value they refuse; the walk locates it."""

    __slots__ = ("kind", "msg", "key")

    def __init__(self, kind: str, msg: str, key: str | None = None):
        self.kind, self.msg, self.key = kind, msg, key


def _pairs_hook(seen: list[_Bad]):
    def hook(pairs: list[tuple[str, Any]]) -> Any:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        keys: set[str] = set()
        for dup, _ in pairs:
            if dup in keys:
                break
            keys.add(dup)
        bad = _Bad("duplicate_key", f"duplicate key {quote_input(dup)} (JSON parsers differ on which one "
                   f"wins, so neither is taken)", dup)
        seen.append(bad)
        return bad
    return hook


def _constant_hook(seen: list[_Bad]):
    def hook(name: str) -> _Bad:  # NaN, Infinity, -Infinity
        bad = _Bad("non_finite_number", f"non-finite number {name} (only finite numbers are JSON)")
        seen.append(bad)
        return bad
    return hook


def _float_hook(seen: list[_Bad]):
    def hook(literal: str) -> float | _Bad:
        value = float(literal)
        if math.isfinite(value):
            return value
        bad = _Bad("non_finite_number", f"number {quote_input(literal)} overflows a 64-bit float")
        seen.append(bad)
        return bad
    return hook


def _find(doc: Any, look_for_surrogates: bool) -> StrictJsonError | None:
    """The first refused thing in `doc` (document order), as an error with its loc. Iterative, so
    a document nested as deep as the parser allows cannot exhaust the stack here."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), doc)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, _Bad):
            where = loc + (safe_text(node.key),) if node.key is not None else loc
            return StrictJsonError(node.kind, node.msg, where)
        if isinstance(node, str):
            if look_for_surrogates and _LONE_SURROGATE.search(node):
                return _surrogate_error(node, loc, "value")
        elif isinstance(node, dict):
            children = []
            for k, v in node.items():
                if look_for_surrogates and _LONE_SURROGATE.search(k):
                    return _surrogate_error(k, loc + (safe_text(k),), "key")
                children.append((loc + (safe_text(k),), v))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(loc + (i,), v) for i, v in enumerate(node)]))
    return None


def _surrogate_error(text: str, loc: tuple[str | int, ...], what: str) -> StrictJsonError:
    m = _LONE_SURROGATE.search(text)
    code = f"U+{ord(m.group()):04X}" if m else "a surrogate"
    return StrictJsonError("lone_surrogate", f"string {what} holds a lone surrogate ({code}), which is not "
                           f"Unicode text: {quote_input(text)}", loc)


def _invalid(e: BaseException) -> StrictJsonError:
    """Any parser failure as json_invalid, with a message built from the error's kind and
    position only (a ValueError's text may quote the input)."""
    if isinstance(e, json.JSONDecodeError):
        msg = f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
    elif isinstance(e, UnicodeDecodeError):
        msg = f"not UTF-8: invalid byte at offset {e.start} ({e.reason})"
    elif isinstance(e, RecursionError):
        msg = "not valid JSON here: nested too deeply"
    elif isinstance(e, ValueError) and "integer string conversion" in str(e):
        msg = "not valid JSON here: an integer literal is too long"
    else:
        msg = f"not valid JSON: the parser failed ({type(e).__name__})"
    return StrictJsonError("json_invalid", msg, ())


def loads_strict(raw: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON document with `json.loads` semantics, refusing duplicate keys, non-finite
    numbers and lone surrogates (see the module docstring).

    Args:
        raw: UTF-8 bytes, or text.
    Returns:
        The document as dicts, lists, str, int, float, bool and None.
    Raises:
        StrictJsonError: for any input that is refused; never another exception.
    """
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    except Exception as e:
        raise _invalid(e) from None
    seen: list[_Bad] = []
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook(seen), parse_constant=_constant_hook(seen),
                         parse_float=_float_hook(seen))
    except Exception as e:  # JSONDecodeError, RecursionError, ValueError (long ints), MemoryError, TypeError
        raise _invalid(e) from None
    surrogates = _may_hold_surrogates(raw, text) and not _encodable(doc, seen)
    if seen or surrogates:
        err = _find(doc, surrogates)
        if err is not None:
            raise err
        if seen:  # unreachable: every marker stays in the tree (a replaced one makes its object a duplicate)
            raise StrictJsonError(seen[0].kind, seen[0].msg, ())
    return doc


def _may_hold_surrogates(raw: object, text: str) -> bool:
    """Whether a lone surrogate can be in the parsed document: the text escapes a surrogate
    (pairs, as ensure_ascii writes an emoji, included), or a str input holds one as it is (bytes
    decoded as UTF-8 never do). Both searches run in C."""
    if isinstance(raw, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def _encodable(doc: Any, seen: list[_Bad]) -> bool:
    """True when every string of `doc` encodes as UTF-8 (no lone surrogate): one pass of the C
    encoder, so that only a document that holds one pays for the walk that locates it."""
    if seen:
        return False  # markers do not serialise; the walk runs anyway
    try:
        json.dumps(doc, ensure_ascii=False, check_circular=False).encode("utf-8")
        return True
    except Exception:
        return False
