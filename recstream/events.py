"""Event and impression-log contracts (DESIGN.md, "Contracts").

Events are UTF-8 JSON on `recstream.events`, keyed by `user_id`, with a schema version `v`.
`parse_event` raises nothing but `InvalidEvent`, whatever the bytes (deep nesting, huge numbers,
invalid UTF-8, lone surrogates, oversize records), so a processor routes every bad record to the
DLQ; the processor loop still treats any other exception as a bad record (defence in depth).
Numbers are strict: `true` is not an int, `"1700000000000"` is not a timestamp. A key given twice,
at any level (`"user_id"` twice: the parser would keep the last, crediting a user other than the
Kafka key), is refused, as are two context keys equal after stripping whitespace; reasons quote
input only through `quote_input` or `safe_text` (escaped, at most 64 characters of input).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints, ValidationError

from recstream.errors import InvalidEvent
from recstream.ids import ID_MAX_LEN, SAFE_TEXT_OR_EMPTY_PATTERN, SAFE_TEXT_PATTERN, Id, error_message
from recstream.strict_json import StrictJsonError, loads_strict, quote_input, safe_text

SCHEMA_VERSION = 1

__all__ = ["Context", "Event", "EventType", "Id", "ID_MAX_LEN", "ImpressionLog", "InvalidEvent", "MAX_EVENT_BYTES",
           "POSITIVE_TYPES", "SCHEMA_VERSION", "SlateItem", "parse_event"]

# 1990-01-01 .. 2100-01-01 in epoch ms: catches seconds-vs-ms mistakes at the door
# (MovieLens-100k dates from 1997).
MIN_TS_MS = 631_152_000_000
MAX_TS_MS = 4_102_444_800_000

# The context map: a few short tags (device, page, category), shared with the HTTP requests.
CONTEXT_MAX_KEYS = 32
CONTEXT_KEY_MAX_LEN = 64
CONTEXT_VALUE_MAX_LEN = 256
ContextKey = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1,
                                              max_length=CONTEXT_KEY_MAX_LEN, pattern=SAFE_TEXT_PATTERN)]
ContextValue = Annotated[str, StringConstraints(strict=True, max_length=CONTEXT_VALUE_MAX_LEN,
                                                pattern=SAFE_TEXT_OR_EMPTY_PATTERN)]
Context = Annotated[dict[ContextKey, ContextValue], Field(max_length=CONTEXT_MAX_KEYS)]

# The largest valid event, every character \u-escaped, is about 130 KB (a full context map);
# anything longer is rejected before the JSON parser sees it.
MAX_EVENT_BYTES = 256 * 1024

# Longest reason kept for the DLQ record (the original bytes travel beside it); each key of the
# input it names is cut to 64 characters and escaped (safe_text), so 8 errors fit.
_MAX_REASON_CHARS = 1000
_MAX_ERRORS_LISTED = 8


class EventType(str, Enum):
    impression = "impression"
    click = "click"
    like = "like"
    purchase = "purchase"
    rating = "rating"
    view = "view"


# Events that count as positive engagement (the user chose the item).
POSITIVE_TYPES = frozenset({EventType.click, EventType.like, EventType.purchase, EventType.rating, EventType.view})


class Event(BaseModel):
    """One user-item interaction.

    Args:
        event_id: unique per event; processors de-duplicate on it.
        ts: event time in epoch milliseconds.
        value: rating, dwell or amount; 1.0 when the type carries no value.
    """

    # Strict where lax parsing hides producer bugs (true as 1, "17e11" or 1.7e12 as a timestamp);
    # `type` stays lax so code may pass "click" as well as EventType.click.
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: StrictInt = Field(SCHEMA_VERSION, description="schema version", ge=1, le=SCHEMA_VERSION)
    event_id: Id = Field(description="unique event id")
    user_id: Id = Field(description="user id (also the Kafka key)")
    item_id: Id = Field(description="item id")
    type: EventType = Field(description="interaction type")
    ts: StrictInt = Field(description="event time, epoch ms", ge=MIN_TS_MS, le=MAX_TS_MS)
    value: StrictFloat = Field(1.0, description="rating / weight", allow_inf_nan=False)
    request_id: Id | None = Field(None, description="serving request that showed the item")
    position: StrictInt | None = Field(None, ge=0, le=10_000, description="slate position, 0-based")
    context: Context | None = Field(None, description=f"small string map: at most {CONTEXT_MAX_KEYS} keys of "
                                                      f"<= {CONTEXT_KEY_MAX_LEN} and values of <= {CONTEXT_VALUE_MAX_LEN} characters")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @property
    def is_positive(self) -> bool:
        return self.type in POSITIVE_TYPES


def validation_reason(e: ValidationError, limit: int = _MAX_REASON_CHARS) -> str:
    """A ValidationError as 'field: message; ...', naming each field and never quoting the input
    (which may be megabytes, or the very bytes that broke a parser); a context key in a field's
    path is the input's, so it reads as safe_text() gives it (escaped, at most 64 characters)."""
    errs = e.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(safe_text(p) if isinstance(p, str) else str(p) for p in err['loc']) or '(record)'}: "
             f"{error_message(err)}" for err in errs[:_MAX_ERRORS_LISTED]]
    if len(errs) > _MAX_ERRORS_LISTED:
        parts.append(f"and {len(errs) - _MAX_ERRORS_LISTED} more")
    reason = "; ".join(parts)
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def parse_event(raw: bytes | str | None) -> Event:
    """Parse one Kafka value into an Event.

    Raises:
        InvalidEvent: for any input that is not a valid event, with a reason naming the field
            and the original bytes; never any other exception.
    """
    if raw is None:
        raise InvalidEvent("empty record (tombstone)", raw=b"")
    try:
        raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    except (UnicodeEncodeError, TypeError, ValueError) as e:
        kept = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else b""
        raise InvalidEvent(f"not bytes or UTF-8 text: {type(e).__name__}", raw=kept) from None
    if len(raw_bytes) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"record is {len(raw_bytes)} bytes, at most {MAX_EVENT_BYTES} allowed", raw=raw_bytes)
    try:
        # pydantic-core parses and validates in one pass, with its own recursion limit and
        # number bounds (json.loads raised RecursionError on b"[" * 100000 and ValueError on
        # 5,000-digit integers, neither an InvalidEvent).
        event = Event.model_validate_json(raw_bytes)
        # The parser keeps the last of two equal keys, so look for one, cheaply: each string of
        # the record is one of the event's (_n_strings) unless a key was given twice, or two context
        # keys are equal once stripped. A string takes two quotes: UTF-8 never puts a 0x22 or 0x5C
        # byte inside a multi-byte character, and with no escaped backslash in the text every
        # backslash-quote is an escaped quote inside a string. Equal counts prove there is no
        # duplicate (on a typical record, one memchr and one count, about 0.5 us); otherwise the
        # strict parser finds it.
        quotes = raw_bytes.count(b'"')
        if b"\\" in raw_bytes:
            quotes = -1 if b"\\\\" in raw_bytes else quotes - raw_bytes.count(b'\\"')
        if quotes != 2 * _n_strings(event):
            _refuse_duplicate_keys(raw_bytes)
        return event
    except InvalidEvent:
        raise
    except ValidationError as e:
        errs = e.errors(include_url=False, include_input=False)
        if errs and errs[0]["type"] == "json_invalid":
            raise InvalidEvent(f"not UTF-8 JSON: {_json_error(raw_bytes, errs[0]['msg'])}", raw=raw_bytes) from None
        if errs and errs[0]["type"] == "model_type":
            raise InvalidEvent("expected a JSON object", raw=raw_bytes) from None
        head = "invalid event: "
        raise InvalidEvent(head + validation_reason(e, _MAX_REASON_CHARS - len(head)), raw=raw_bytes) from None
    except Exception as e:  # a decoder bug must still end as a DLQ record, not a dead processor
        raise InvalidEvent(f"undecodable record ({type(e).__name__}: {safe_text(str(e))})", raw=raw_bytes) from e


def _n_strings(event: Event) -> int:
    """How many JSON strings a record of `event` holds: its keys, the four string fields that are
    always there (ids and type), request_id when given, and the context's values."""
    n = len(event.model_fields_set) + 4 + (event.request_id is not None)
    return n + 2 * len(event.context) if event.context else n


def _refuse_duplicate_keys(raw_bytes: bytes) -> None:
    """Raise InvalidEvent when the record gives a key twice at some level, or two context keys
    equal after stripping whitespace (the event would keep one of them silently)."""
    try:
        doc = loads_strict(raw_bytes)
    except StrictJsonError as e:
        raise InvalidEvent(f"invalid event: {e}", raw=raw_bytes) from None
    context = doc.get("context") if isinstance(doc, dict) else None
    if isinstance(context, dict):
        stripped: dict[str, str] = {}
        for key in context:
            if key.strip() in stripped:
                raise InvalidEvent(f"invalid event: context: keys {quote_input(stripped[key.strip()])} and "
                                   f"{quote_input(key)} are the same after stripping whitespace", raw=raw_bytes)
            stripped[key.strip()] = key


def _json_error(raw_bytes: bytes, parser_msg: str) -> str:
    """The reason a record is not JSON: the strict parser's located one when it has one (a lone
    surrogate, say, which pydantic-core reports as an unexpected end of a hex escape), else the
    parser's message. Runs only for records already refused."""
    try:
        loads_strict(raw_bytes)
    except StrictJsonError as e:
        if e.kind != "json_invalid":
            return str(e)
    return parser_msg[:200]


class SlateItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    position: int = Field(ge=0)
    score: float
    propensity: float = Field(gt=0.0, le=1.0, description="P(policy showed this item at this position)")


class LoggedRequest(BaseModel):
    """The request as the client sent it, so the replay tool can send it again."""

    k: int
    context: dict[str, str] | None = None
    exclude: list[str] = Field(default_factory=list)


class ServedScores(BaseModel):
    """How the final order of one served request came about, per support item (aligned with
    `ImpressionLog.support`), so replaying the served version gives back exactly its greedy order
    and a re-weighted fusion can be evaluated without re-scoring (scoring/fusion.py):

        final(i) = sum_s fusion[s] * (stages[s][i] - stats[s][0]) / (stats[s][1] + Z_EPS)

    `stats` are each stage's mean and standard deviation over all the candidates the fusion
    z-scored (the coarse cut), not only the support. A stage that did not run, or failed and was
    replaced by its fallback, is missing from `stages`; `cascade` names the last stage whose order
    was served (a prefix of retrieval -> coarse -> ranker).
    """

    model_config = ConfigDict(extra="forbid")

    cascade: str = Field(description="last stage whose scores made the order: retrieval, coarse or ranker")
    stages: dict[str, list[float]] = Field(description="stage -> its score of each support item")
    stats: dict[str, list[float]] = Field(default_factory=dict, description="stage -> [mean, std] over the fused candidates")
    fusion: dict[str, float] = Field(default_factory=dict, description="stage -> fusion weight (empty: the stage's own order)")
    final: list[float] = Field(description="the score the support was ordered by, per support item")
    like: list[float] | None = Field(None, description="the ranker's like/click probability per support item")


class ImpressionLog(BaseModel):
    """One served request, logged to `recstream.impressions` keyed by user_id."""

    model_config = ConfigDict(extra="forbid")

    v: int = SCHEMA_VERSION
    request_id: str
    user_id: str
    ts: int = Field(description="serving time, epoch ms")
    variant: str
    model_versions: dict[str, str]
    timings_ms: dict[str, float]
    degraded: bool = False
    policy: str = Field("deterministic", description="slate policy that drew the propensities")
    exploration: dict | None = Field(None, description="the slate policy's parameters (epsilon, pool_size)")
    request: LoggedRequest | None = Field(None, description="the request, for traffic replay")
    support: list[str] | None = Field(None, description="the final ranking's head the slate was drawn from (top "
                                      "k + pool_size): what an evaluated policy may re-rank with full coverage")
    slate: list[SlateItem]
    scores: ServedScores | None = Field(None, description="the stages' scores of the support and the fusion that "
                                        "ordered it (None: a server from before this field)")
    features: dict | None = Field(None, description="what the ranker saw (history tail, user and shown items' "
                                  "feature vectors, whether long-term interest was present), so training can "
                                  "learn from exactly what was served")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
