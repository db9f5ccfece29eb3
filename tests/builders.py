"""Test data builders shared by unit and integration tests: one valid event, numbered events, a
seeded stream with every event type, BSE behaviours, planted training data; and the reader of a
DLQ record's original bytes. Deterministic for a given seed."""

from __future__ import annotations

import numpy as np

from recstream.events import Event, EventType

TS = 1_700_000_000_000  # 2023-11-14, epoch ms
HOUR_MS = 3_600_000
# One valid event as a JSON-ready dict; tests derive malformed or numbered events from it.
GOOD = {"event_id": "e", "user_id": "u1", "item_id": "i1", "type": "click", "ts": TS}


def planted_synthetic():
    """Tiny synthetic data with a strong planted signal, for tests that models learn: 300 users x 40
    views over 6 categories, 8 impression rounds (5 train, 1 valid, 2 test); an impressed item of
    one of the user's interest categories is clicked with p = 0.88, any other with p = 0.05."""
    from pipelines.data.synthetic import SyntheticConfig

    return SyntheticConfig(n_users=300, n_items=60, n_categories=6, n_interests=2, n_short_interests=1, seq_len=40,
                           short_len=10, n_impressions=8, long_weight=5.0, short_weight=5.0, click_bias=-3.0, seed=3)


def event(i: int, user: str = "u1", item: str | None = None, typ: str = "click", **kw) -> Event:
    """Event number i: id "e<i>", item "i<i>" unless given, at TS + i ms."""
    return Event(event_id=f"e{i}", user_id=user, item_id=item if item is not None else f"i{i}", type=EventType(typ),
                 ts=TS + i, **kw)


def event_bytes(i: int, **kw) -> bytes:
    """The wire form of event(i)."""
    return event(i, **kw).to_bytes()


def mixed_events(n: int = 6000, n_users: int = 60, n_items: int = 200, seed: int = 0, span_days: float = 10.0) -> list[Event]:
    """A seeded stream with every event type, in time order: ratings valued 1-5, contexts with a
    "genre", a "category" or neither, bursts within an hour and gaps of hours to days over
    `span_days` (so the 1 h, 24 h and 7 d windows, decay and pruning all matter)."""
    rng = np.random.default_rng(seed)
    types = [EventType.impression] * 5 + [EventType.click] * 2 + [EventType.view] * 2 + [
        EventType.like, EventType.purchase, EventType.rating, EventType.rating]
    genres = ["drama", "comedy", "action", "horror", "sci-fi", "romance", "docs"]
    # gaps: mostly seconds, sometimes an hour or several, rarely a day or two
    gaps_ms = rng.choice([1_000, 30_000, 600_000, 3 * HOUR_MS, 20 * HOUR_MS], size=n, p=[0.55, 0.25, 0.12, 0.06, 0.02])
    elapsed = np.cumsum(gaps_ms).astype(np.float64)
    ts = TS + (elapsed / elapsed[-1] * span_days * 24 * HOUR_MS).astype(np.int64)  # scaled to the span
    out = []
    for k in range(n):
        typ = types[int(rng.integers(len(types)))]
        value = float(rng.integers(1, 6)) if typ is EventType.rating else 1.0
        ctx_kind = rng.integers(3)
        g = genres[int(rng.integers(len(genres)))]
        context = {"genre": g} if ctx_kind == 0 else {"category": g} if ctx_kind == 1 else None
        out.append(Event(event_id=f"m{seed}-{k}", user_id=f"u{int(rng.integers(n_users))}",
                         item_id=f"i{int(rng.integers(n_items))}", type=typ, ts=int(ts[k]), value=value, context=context))
    return out


def behaviours(rng: np.random.Generator, n: int, n_users: int, start: int = 0, n_partitions: int = 1,
               n_items: int = 330) -> list:
    """n BSE behaviours of random users and items (ids up to n_items, beyond a 300-item vocabulary
    they exercise hashed OOV rows), from topic "events", record k on partition k % n_partitions at
    offset start + k."""
    from features.bse import Behaviour

    return [Behaviour(f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", "events", k % n_partitions, start + k)
            for k in range(n)]


def dlq_original(record: dict) -> bytes:
    """The original bytes a DLQ record carries (text when they were UTF-8, else base64)."""
    import base64

    return base64.b64decode(record["original"]) if record["original_encoding"] == "base64" else record["original"].encode("utf-8")


def leave_last_out_samples(users: np.ndarray, items: np.ndarray, per_user: int, n_items: int):
    """Retrieval samples from per_user interactions per user (users in blocks, 1 s apart): the
    last of each user's is the test target, the rest train. Returns (train, test, catalogue)."""
    from pipelines.data.datasets import Samples, SequenceStore

    n_users = int(users.max())
    ts = np.tile(np.arange(per_user) * 1000, n_users) + 1_700_000_000_000
    store = SequenceStore(users, items, ts, n_users + 1)
    end = store.end_before(users, ts)
    last = np.tile(np.arange(per_user) == per_user - 1, n_users)

    def part(mask):
        return Samples(store, users[mask], items[mask], ts[mask], end[mask], 10)

    return part(~last), part(last), np.arange(1, n_items + 1)
