import math

import pytest

from pipelines.stream.feature_writer import HOUR_MS, _stale_fields, item_features, user_features

H0 = 500_000  # an hour index


def _hash(events: list[tuple[str, int]]) -> dict[str, str]:
    """Counter hash as the writer stores it, from (kind, ts_ms) pairs."""
    out: dict[str, int] = {}
    for kind, ts in events:
        f = f"{kind}:{ts // HOUR_MS}"
        out[f] = out.get(f, 0) + 1
    fields = {k: str(v) for k, v in out.items()}
    fields["ts"] = str(max(ts for _, ts in events))
    fields["first"] = str(min(ts for _, ts in events))
    return fields


def test_user_windows_are_event_time_hour_buckets():
    now = H0 * HOUR_MS + 30 * 60_000
    events = [("imp", now), ("imp", now - 10 * 60_000), ("clk", now),  # latest hour
              ("imp", now - 5 * HOUR_MS), ("clk", now - 5 * HOUR_MS),  # within 24h
              ("imp", now - 3 * 24 * HOUR_MS), ("lik", now - 3 * 24 * HOUR_MS),  # within 7d
              ("imp", now - 9 * 24 * HOUR_MS)]  # outside every window
    row = user_features(_hash(events), ["drama", "comedy"])
    assert (row["impressions_1h"], row["impressions_24h"], row["impressions_7d"]) == (2, 3, 4)
    assert (row["clicks_1h"], row["clicks_24h"], row["clicks_7d"]) == (1, 2, 2)
    assert (row["likes_1h"], row["likes_24h"], row["likes_7d"]) == (0, 0, 1)
    assert row["ctr_24h"] == pytest.approx(2 / 3) and row["ctr_7d"] == pytest.approx(2 / 4)
    assert row["recent_genres"] == "drama|comedy"
    assert row["event_timestamp"] == now


def test_item_popularity_decays_and_age_counts_from_first_event():
    now = H0 * HOUR_MS
    row = item_features(_hash([("clk", now), ("clk", now - 24 * HOUR_MS), ("lik", now - 48 * HOUR_MS),
                               ("imp", now - 2 * HOUR_MS)]))
    assert row["popularity"] == pytest.approx(1 + 0.5 + 0.25)
    assert row["age_s"] == pytest.approx(48 * 3600)
    assert row["clicks_24h"] == 1 and row["clicks_7d"] == 2 and row["impressions_7d"] == 1
    assert math.isclose(row["ctr_7d"], 2.0)  # engagement without impressions (ratings) can exceed 1


def test_no_impressions_means_zero_ctr():
    row = user_features(_hash([("clk", H0 * HOUR_MS)]), [])
    assert row["ctr_24h"] == 0.0 and row["ctr_7d"] == 0.0


def test_stale_buckets_are_pruned_relative_to_latest_event():
    now = H0 * HOUR_MS
    fields = _hash([("clk", now), ("clk", now - 8 * 24 * HOUR_MS)])
    assert _stale_fields(fields) == [f"clk:{H0 - 8 * 24}"]


def test_freshness_marks_round_trip():
    from pipelines.stream.feature_writer import decode_marks, encode_marks

    ts = [1_700_000_000_123, 1_700_000_000_100, 1_700_000_004_000]
    assert decode_marks(encode_marks(ts)) == ts
    assert len(encode_marks(ts)) < 40  # deltas, not three 13-digit numbers
