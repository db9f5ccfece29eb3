"""The one definition of an identifier (`user_id`, `item_id`, `event_id`, `request_id`), shared by
the event contract and the HTTP requests (DESIGN.md, "Contracts": Identifiers).

A valid id, after stripping surrounding whitespace, is 1..ID_MAX_LEN characters with no control
character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F, NUL included). Ids become Redis
keys, log lines and Kafka keys, so the bound keeps one bad producer from filling Redis and the
character rule keeps NULs and line breaks out of keys and logs. Lone surrogates cannot occur:
they are not valid UTF-8 and are rejected at decoding.

The check runs inside pydantic-core (a Rust regex), not in a Python validator, so the stream's
one-pass event parse stays one pass.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints, TypeAdapter, ValidationError

ID_MAX_LEN = 128

# Character classes for pydantic-core's regex; error_message() turns a mismatch into the rule.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
NO_CONTROL_PATTERN = rf"^[^{_CONTROL}]+$"
NO_CONTROL_OR_EMPTY_PATTERN = rf"^[^{_CONTROL}]*$"
ID_PATTERN = NO_CONTROL_PATTERN

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


def error_message(err: dict) -> str:
    """A pydantic error entry as a short human message: the pattern of a failed `Id` reads as the
    rule it stands for, not as a regex."""
    if err.get("type") == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in (
            NO_CONTROL_PATTERN, NO_CONTROL_OR_EMPTY_PATTERN):
        return "must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
    return str(err.get("msg", "invalid"))
