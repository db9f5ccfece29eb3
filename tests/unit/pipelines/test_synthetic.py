"""Synthetic events: seeded, deterministic ids, time-ordered, valid Events."""

from itertools import islice

from pipelines.data.synthetic import SyntheticConfig, generate_events, generate_world
from recstream.events import Event, parse_event

CFG = SyntheticConfig(n_users=12, n_items=40, n_categories=8, seq_len=30, short_len=10, n_impressions=3, seed=2)


def test_deterministic_and_time_ordered():
    a = list(generate_events(CFG))
    generate_world.cache_clear()
    b = list(generate_events(CFG))
    assert a == b
    assert len(a) >= CFG.n_users * (CFG.seq_len + CFG.n_impressions)
    assert all(x.ts <= y.ts for x, y in zip(a, a[1:]))
    assert len({e.event_id for e in a}) == len(a)
    assert all(isinstance(e, Event) and parse_event(e.to_bytes()) == e for e in islice(a, 50))
    types = {e.type.value for e in a}
    assert {"view", "impression"} <= types <= {"view", "impression", "click"}


def test_seed_changes_the_world():
    other = list(islice(generate_events(SyntheticConfig(**{**CFG.__dict__, "seed": 3})), 100))
    assert [e.item_id for e in other] != [e.item_id for e in islice(generate_events(CFG), 100)]


def test_clicks_follow_their_impression():
    events = list(generate_events(CFG))
    shown = {e.request_id: e for e in events if e.type.value == "impression"}
    for c in (e for e in events if e.type.value == "click"):
        assert c.request_id in shown and shown[c.request_id].item_id == c.item_id and shown[c.request_id].ts < c.ts


def test_config_fails_at_load_time_with_values():
    import pytest

    with pytest.raises(ValueError, match=r"n_interests \(5\)"):
        SyntheticConfig(n_interests=5, n_short_interests=5, n_categories=10)
