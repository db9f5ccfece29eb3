"""Event and impression-log contracts (DESIGN.md, "Contracts").

Events are UTF-8 JSON on `recstream.events`, keyed by `user_id`, with a schema version `v`.
Parsing never raises anything but `InvalidEvent`, so a processor can route every bad record
to the DLQ without a catch-all.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from recstream.errors import InvalidEvent

SCHEMA_VERSION = 1

# Ids are opaque strings; a bound keeps one bad producer from filling Redis keys.
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]

# 1990-01-01 .. 2100-01-01 in epoch ms: catches seconds-vs-ms mistakes at the door
# (MovieLens-100k dates from 1997).
MIN_TS_MS = 631_152_000_000
MAX_TS_MS = 4_102_444_800_000


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

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(SCHEMA_VERSION, description="schema version", ge=1, le=SCHEMA_VERSION)
    event_id: Id = Field(description="unique event id")
    user_id: Id = Field(description="user id (also the Kafka key)")
    item_id: Id = Field(description="item id")
    type: EventType = Field(description="interaction type")
    ts: int = Field(description="event time, epoch ms", ge=MIN_TS_MS, le=MAX_TS_MS)
    value: float = Field(1.0, description="rating / weight", allow_inf_nan=False)
    request_id: str | None = Field(None, max_length=128, description="serving request that showed the item")
    position: int | None = Field(None, ge=0, le=10_000, description="slate position, 0-based")
    context: dict[str, str] | None = Field(None, description="small string map")

    @field_validator("context")
    @classmethod
    def _small_context(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(v) > 32:
            raise ValueError(f"context has {len(v)} keys, at most 32 allowed")
        return v

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @property
    def is_positive(self) -> bool:
        return self.type in POSITIVE_TYPES


def parse_event(raw: bytes | str) -> Event:
    """Parse one Kafka value into an Event.

    Raises:
        InvalidEvent: with a reason naming the field, and the original bytes.
    """
    raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else raw
    if raw_bytes is None:
        raise InvalidEvent("empty record (tombstone)", raw=b"")
    try:
        # pydantic-core parses and validates in one pass, twice as fast as json.loads first.
        # Only a record that fails takes the slower path below, which names the problem.
        return Event.model_validate_json(raw_bytes)
    except ValidationError:
        pass
    try:
        obj = json.loads(raw_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidEvent(f"not UTF-8 JSON: {e}", raw=raw_bytes) from e
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}", raw=raw_bytes)
    obj.setdefault("v", SCHEMA_VERSION)
    try:
        return Event.model_validate(obj)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidEvent(f"invalid event: {fields}", raw=raw_bytes) from e


class SlateItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    position: int = Field(ge=0)
    score: float
    propensity: float = Field(gt=0.0, le=1.0, description="P(policy showed this item at this position)")


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
    slate: list[SlateItem]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
