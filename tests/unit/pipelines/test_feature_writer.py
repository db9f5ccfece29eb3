"""Hand-counted cases for the feature definitions, checked on the oracle (tests/feature_oracle.py)
that the integration tests compare the published Feast values and item blobs with: the oracle is
only worth comparing with if it counts what the README says."""

import math

import pytest

from recstream.events import Event, EventType
from tests.feature_oracle import item_row, user_row

HOUR_MS = 3_600_000
H0 = 500_000  # an hour index


def _events(pairs: list[tuple[str, int]], **kw) -> list[Event]:
    return [Event(event_id=f"e{n}", user_id="u1", item_id="i1", type=EventType(t), ts=ts, **kw)
            for n, (t, ts) in enumerate(pairs)]


def test_user_windows_are_event_time_hour_buckets():
    now = H0 * HOUR_MS + 30 * 60_000
    events = _events([("impression", now), ("impression", now - 10 * 60_000), ("click", now),  # latest hour
                      ("impression", now - 5 * HOUR_MS), ("click", now - 5 * HOUR_MS),  # within 24h
                      ("impression", now - 3 * 24 * HOUR_MS), ("like", now - 3 * 24 * HOUR_MS),  # within 7d
                      ("impression", now - 9 * 24 * HOUR_MS)])  # outside every window
    row = user_row(events)
    assert (row["impressions_1h"], row["impressions_24h"], row["impressions_7d"]) == (2, 3, 4)
    assert (row["clicks_1h"], row["clicks_24h"], row["clicks_7d"]) == (1, 2, 2)
    assert (row["likes_1h"], row["likes_24h"], row["likes_7d"]) == (0, 0, 1)
    assert row["ctr_24h"] == pytest.approx(2 / 3) and row["ctr_7d"] == pytest.approx(2 / 4)
    assert row["event_timestamp"] == now


def test_recent_genres_are_distinct_most_recent_first_without_impressions():
    ts = H0 * HOUR_MS
    genres = ["drama", "comedy", "drama", "noir"]
    events = [Event(event_id=f"e{n}", user_id="u1", item_id="i1", type=EventType.click, ts=ts + n,
                    context={"genre": g}) for n, g in enumerate(genres)]
    events.append(Event(event_id="imp", user_id="u1", item_id="i1", type=EventType.impression, ts=ts + 9,
                        context={"genre": "western"}))
    assert user_row(events)["recent_genres"] == "noir|drama|comedy"


def test_item_popularity_decays_and_age_counts_from_first_event():
    now = H0 * HOUR_MS
    row = item_row(_events([("click", now), ("click", now - 24 * HOUR_MS), ("like", now - 48 * HOUR_MS),
                            ("impression", now - 2 * HOUR_MS)]))
    assert row["popularity"] == pytest.approx(1 + 0.5 + 0.25)
    assert row["age_s"] == pytest.approx(48 * 3600)
    assert row["clicks_24h"] == 1 and row["clicks_7d"] == 2 and row["impressions_7d"] == 1
    assert math.isclose(row["ctr_7d"], 2.0)  # engagement without impressions (ratings) can exceed 1


def test_a_high_rating_and_a_purchase_count_as_click_and_like():
    now = H0 * HOUR_MS
    events = _events([("purchase", now)]) + [Event(event_id=f"r{v}", user_id="u1", item_id="i1", type=EventType.rating,
                                                   ts=now, value=v) for v in (3.0, 4.0)]
    row = item_row(events)
    assert (row["clicks_7d"], row["likes_7d"]) == (3, 2)
    assert row["popularity"] == pytest.approx(5.0)  # each click and each like of this hour weighs 1


def test_no_impressions_means_zero_ctr():
    row = user_row(_events([("click", H0 * HOUR_MS)]))
    assert row["ctr_24h"] == 0.0 and row["ctr_7d"] == 0.0


def test_freshness_marks_round_trip():
    from pipelines.stream.feature_writer import decode_marks, encode_marks

    ts = [1_700_000_000_123, 1_700_000_000_100, 1_700_000_004_000]
    assert decode_marks(encode_marks(ts)) == ts
    assert len(encode_marks(ts)) < 40  # deltas, not three 13-digit numbers
