"""`recstream bench replay`'s reproduction section (benchmarks/replay.py served_reproduction): the
impressions the REAL request path logs, replayed with the variants that served them."""

from benchmarks.replay import REPLAY_PATHS, served_reproduction


def test_replaying_the_real_paths_log_gives_back_every_served_greedy_slot():
    # histories shorter than the window a request reads and logs (50): the log holds everything the ranker saw,
    # so even re-computing the ranker gives back the served order
    r = served_reproduction(n_requests=30, hist_len=40)
    n = r["n_requests"]
    assert n == 30 and r["n_with_scores"] == n and r["n_degraded"] == 0
    assert 0 < r["n_greedy_slots"] < r["n_slots"]  # variant A explores: some slots are not greedy
    assert set(r["served_order_reproduced_share_by_variant"]) == {"A", "B"}
    for path, key in REPLAY_PATHS.items():
        assert r[key] == 1.0, (path, r[key], r[f"{key}_paths"])
    assert r["served_order_reproduced_share_paths"] == {"logged": n}
    assert r["served_order_reproduced_share_fused_paths"] == {"fused": n}
    assert r["served_order_reproduced_share_rescored_paths"] == {"rescored": n}


def test_a_history_longer_than_the_logged_tail_costs_only_the_rescored_path():
    r = served_reproduction(n_requests=30, hist_len=120)
    assert r["served_order_reproduced_share"] == 1.0 == r["served_order_reproduced_share_fused"]
    # the served SDIM tables cover 120 behaviours, the request's window (and so the log) 50
    assert r["served_order_reproduced_share_rescored"] < 0.9
    assert r["served_order_reproduced_share_rescored_paths"] == {"rescored": 30}  # the log cannot tell the tables saw more


def test_the_bench_report_carries_the_shares(tmp_path):
    import json

    from benchmarks.replay import run

    r = run(tmp_path, n=2000, reps=2, n_boot=20, real_path_requests=12)
    j = json.loads((tmp_path / "replay.json").read_text())
    assert j["served_order_reproduced_share"] == r["served_order_reproduced_share"] == 1.0
    assert set(REPLAY_PATHS.values()) <= set(j) and j["real_path"]["n_requests"] == 12
    md = (tmp_path / "replay.md").read_text()
    assert "## Served order reproduced (the real request path)" in md and "| auto | 100.0% |" in md
