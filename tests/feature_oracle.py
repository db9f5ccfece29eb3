"""The stream features computed from the raw events alone: an oracle for tests.

It shares no code with the feature-writer (`pipelines/stream/feature_writer.py`: hour-bucket
counters in Redis) or its publisher (`pipelines/stream/feature_publisher.py`: a Lua aggregation),
and no constants: it filters an entity's event list with the definitions below, written from the
README ("Stream processors") and the Feast views (`features/repo/definitions.py`).

- Time is event time at hour resolution: an event at `ts` ms lies in hour `ts // 3_600_000`. An
  entity's windows end at the hour of its latest event T: "1h" is that hour, "24h" the 24 hours
  up to and including it, "7d" the 168 hours.
- What an event counts as: an impression is an impression; a click, a view, a purchase and a
  rating (any value) are clicks (engagement; ratings and views come without an impression); a
  like is a like, and so are a purchase and a rating of 4 or more (those count twice: click and
  like).
- CTR over a window: clicks / impressions, 0 without impressions (it can exceed 1).
- Item popularity: every click and every like of the last 7 days, each weighted 0.5 ** (hours
  before T's hour / 24): a half-life of one day.
- Item age: seconds from the item's first event to T.
- Recent genres of a user: the genre of each non-impression event (its context's "genre", else
  its "category"), most recent first in the order the user's events arrived (one partition per
  user), distinct, at most 5, looked for among the user's last 21 such events (the writer keeps a
  bounded list), joined with "|".
- `event_timestamp`: T, in epoch ms.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

_HOUR = 3_600_000
_USER_WINDOWS = {"1h": 1, "24h": 24, "7d": 168}
_ITEM_WINDOWS = {"24h": 24, "7d": 168}


def counts_as(e) -> set[str]:
    """{"impression", "click", "like"}: what one event counts as."""
    t, out = e.type.value, set()
    if t == "impression":
        out.add("impression")
    if t in ("click", "view", "purchase", "rating"):
        out.add("click")
    if t in ("like", "purchase") or (t == "rating" and e.value >= 4):
        out.add("like")
    return out


def _hours_before_latest(e, latest_ms: int) -> int:
    return latest_ms // _HOUR - e.ts // _HOUR


def _count(events, what: str, latest_ms: int, hours: int) -> int:
    return sum(1 for e in events if what in counts_as(e) and _hours_before_latest(e, latest_ms) < hours)


def _genre(e) -> str | None:
    if e.type.value == "impression" or not e.context:
        return None
    return e.context.get("genre") or e.context.get("category") or None


def user_row(events) -> dict:
    """Feature row of one user over its events (in arrival order); {} without events."""
    if not events:
        return {}
    latest = max(e.ts for e in events)
    row: dict = {}
    for name, what in (("impressions", "impression"), ("clicks", "click"), ("likes", "like")):
        for win, hours in _USER_WINDOWS.items():
            row[f"{name}_{win}"] = _count(events, what, latest, hours)
    for win in ("24h", "7d"):
        imp = row[f"impressions_{win}"]
        row[f"ctr_{win}"] = row[f"clicks_{win}"] / imp if imp else 0.0
    recent = [g for g in (_genre(e) for e in events) if g][-21:][::-1]
    distinct: list[str] = []
    for g in recent:
        if g not in distinct and len(distinct) < 5:
            distinct.append(g)
    row["recent_genres"] = "|".join(distinct)
    row["event_timestamp"] = latest
    return row


def item_row(events) -> dict:
    """Feature row of one item over its events; {} without events."""
    if not events:
        return {}
    latest = max(e.ts for e in events)
    row: dict = {}
    for name, what in (("impressions", "impression"), ("clicks", "click"), ("likes", "like")):
        for win, hours in _ITEM_WINDOWS.items():
            row[f"{name}_{win}"] = _count(events, what, latest, hours)
    row["ctr_7d"] = row["clicks_7d"] / row["impressions_7d"] if row["impressions_7d"] else 0.0
    row["popularity"] = sum(0.5 ** (_hours_before_latest(e, latest) / 24) * len(counts_as(e) & {"click", "like"})
                            for e in events if _hours_before_latest(e, latest) < 168)
    row["age_s"] = (latest - min(e.ts for e in events)) / 1000
    row["event_timestamp"] = latest
    return row


def by_entity(events, key: str) -> dict[str, list]:
    """entity id -> its events in stream order; key "user_id" or "item_id"."""
    out: dict[str, list] = defaultdict(list)
    for e in events:
        out[getattr(e, key)].append(e)
    return out


def user_frame(events) -> pd.DataFrame:
    """One row per user (column user_id, then the features, event_timestamp in ms)."""
    return pd.DataFrame([{"user_id": u, **user_row(evs)} for u, evs in by_entity(events, "user_id").items()])


def item_frame(events) -> pd.DataFrame:
    """One row per item (column item_id, then the features, event_timestamp in ms)."""
    return pd.DataFrame([{"item_id": i, **item_row(evs)} for i, evs in by_entity(events, "item_id").items()])
