"""The replay tool's record path: parsing, attribution, rows for a policy, the report, traffic pacing."""

import json
import time

import httpx
import numpy as np
import pytest

from pipelines.replay import data as D
from pipelines.replay import estimators as E
from pipelines.replay import traffic as T
from pipelines.replay.policies import LoggedPolicy, build_rows
from pipelines.replay.report import TrafficResult, run_replay
from pipelines.replay.simulator import SimConfig, SimPolicy, SimScorer, Simulator, to_records
from recstream.events import Event, ImpressionLog, LoggedRequest, SlateItem

T0 = 1_750_000_000_000


def _imp(rid, user, ts, items, props=None, support=None, exploration=None, policy="deterministic"):
    props = props or [1.0] * len(items)
    return ImpressionLog(request_id=rid, user_id=user, ts=ts, variant="A", model_versions={"ranker": "v1"},
                         timings_ms={}, policy=policy, exploration=exploration, support=support,
                         request=LoggedRequest(k=len(items), context={"page": "home"}),
                         slate=[SlateItem(item_id=i, position=p, score=0.0, propensity=q)
                                for p, (i, q) in enumerate(zip(items, props))])


def _ev(eid, user, item, ts, typ="click", rid=None, pos=None):
    return Event(event_id=eid, user_id=user, item_id=item, type=typ, ts=ts, request_id=rid, position=pos)


def test_attribution_by_request_id_by_item_and_window():
    imps = [_imp("r1", "u", T0, ["a", "b"]), _imp("r2", "u", T0 + 10_000, ["b", "c"]), _imp("r3", "v", T0, ["a", "b"])]
    evs = [
        _ev("e1", "u", "a", T0 + 500, rid="r1", pos=0),  # names its impression
        _ev("e2", "u", "b", T0 + 20_000),  # no request id: the latest showing of b to u (r2, slot 0)
        _ev("e3", "u", "c", T0 + 10_000 + 7_200_000),  # after the window
        _ev("e4", "v", "b", T0 + 100, typ="view"),  # not a reward type
        _ev("e5", "v", "a", T0 - 1),  # before the impression
        _ev("e6", "w", "a", T0 + 10, rid="r3", pos=0),  # another user claiming r3: ignored
    ]
    rlog = D.parse_records([i.to_bytes() for i in imps] + [b"not json"], [e.to_bytes() for e in evs] + [b"{}"])
    assert rlog.skipped == {"bad_impression": 1, "bad_event": 1}
    assert D.attribute(rlog, window_s=3600) == {("r1", 0): 1.0, ("r2", 0): 1.0}
    after = D.interactions_after(rlog, window_s=3600)
    assert after["r1"] == {"a", "b"} and after["r2"] == {"b"} and after["r3"] == set()


def test_parquet_round_trip(tmp_path):
    imps = [_imp("r1", "u", T0, ["a", "b"], support=["a", "b", "c"])]
    evs = [_ev("e1", "u", "a", T0 + 5, rid="r1", pos=0)]
    D.write_parquet(tmp_path / "log.parquet", D.ReplayLog(imps, evs))
    back = D.read_parquet(tmp_path / "log.parquet")
    assert back.impressions == imps and back.events == evs


def test_full_record_path_equals_the_array_path():
    """Records serialised as the platform logs them, parsed and attributed, give the rows the
    simulator computes directly: the tool loses or invents no click and no propensity."""
    sim = Simulator(SimConfig(n_users=300, n_items=100, seed=2))
    target = sim.policy(0.4)
    lg = sim.log(3000, seed=5)
    imps, evs = to_records(lg)
    rlog = D.parse_records([i.to_bytes() for i in imps], [e.to_bytes() for e in evs])
    built = build_rows(rlog.impressions, D.attribute(rlog), SimPolicy(sim, target), SimScorer(sim))
    fast = lg.rows(target)
    for e in ("ips", "snips", "dr", "dm"):
        assert E.terms(built.rows, e).value() == pytest.approx(E.terms(fast, e).value(), rel=1e-9)
    assert built.unsupported_mass == 0.0
    # the logging policy's marginals rebuilt from the record equal what it logged
    logged = build_rows(rlog.impressions, D.attribute(rlog), LoggedPolicy())
    assert np.allclose(logged.rows.target_pscore, logged.rows.pscore)


def test_report_files_and_paired_differences(tmp_path):
    sim = Simulator(SimConfig(n_users=200, n_items=80, seed=4))
    imps, evs = to_records(sim.log(2000, seed=1))
    rlog = D.parse_records([i.to_bytes() for i in imps], [e.to_bytes() for e in evs])
    res = run_replay(rlog, [SimPolicy(sim, sim.policy(0.3), "better"), SimPolicy(sim, sim.policy(3.0), "worse")],
                     tmp_path, direct_model=SimScorer(sim), n_boot=100)
    assert set(res["policies"]) == {"logged", "better", "worse"}
    assert set(res["differences"]) == {"better - logged", "worse - logged", "worse - better"}
    for name in ("report.json", "report.md", "estimates.png", "weights.png"):
        assert (tmp_path / name).stat().st_size > 0
    j = json.loads((tmp_path / "report.json").read_text())
    d = j["differences"]["worse - better"]["snips"]
    assert d["ci_low"] <= d["value"] <= d["ci_high"] and 0 < d["p_value"] <= 1
    # the logged policy's IPS is its on-policy mean: clicks / impressions
    clicks = sum(1 for _ in evs)
    assert j["policies"]["logged"]["estimates"]["ips"]["value"] == pytest.approx(clicks / len(imps))


def test_unsupported_policy_is_reported():
    # deterministic logging: a policy that swaps the two items has no support at either slot
    imps = [_imp(f"r{n}", "u", T0 + n, ["a", "b"]) for n in range(5)]

    class Swap:
        name = "swap"

        def marginals(self, imp):
            return [{"b": 1.0}, {"a": 1.0}]

    built = build_rows(imps, {}, Swap())
    assert built.unsupported_mass == pytest.approx(1.0) and not built.rows.target_pscore.any()


def test_traffic_replay_paces_pairs_and_sends_the_logged_request(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((time.monotonic(), request.headers["x-recstream-replay"], body))
        items = [{"item_id": "a" if request.headers["x-recstream-replay"] == "A" else "z", "score": 1.0}]
        return httpx.Response(200, json={"items": items, "timings_ms": {"total": 1.0}, "degraded": False})

    real = httpx.AsyncClient
    monkeypatch.setattr(T.httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    imps = [_imp(f"r{n}", f"u{n}", T0 + 1000 * (5 - n), ["a", "b"]) for n in range(5)]
    answers = T.replay_requests("http://test", imps, ["A", "B"], rate_per_s=40.0, max_in_flight=2)
    assert len(answers) == 10 and all(a.status == 200 for a in answers)
    assert [b["user_id"] for _, v, b in seen if v == "A"] == ["u4", "u3", "u2", "u1", "u0"]  # time order
    assert all(b == {"user_id": b["user_id"], "k": 2, "context": {"page": "home"}} for _, _, b in seen)
    starts = [t for t, _, _ in seen]
    assert starts[-1] - starts[0] >= 9 / 40.0 * 0.95  # 10 sends at <= 40/s take >= 9/40 s
    ids, per = T.per_request_metrics(answers, {f"r{n}": {"a"} for n in range(5)}, ["A", "B"], k=2)
    assert len(ids) == 5 and per["A"]["hit"].mean() == 1.0 and per["B"]["hit"].mean() == 0.0
    d = T.paired_bootstrap(per["A"]["hit"], per["B"]["hit"], n_boot=200)
    assert d["value"] == -1.0 and d["p_value"] <= 0.01


def test_ranking_metrics_by_hand():
    m = T.ranking_metrics(["x", "a", "y", "b"], {"a", "b"}, k=4)
    assert m["hit"] == 1.0 and m["recall"] == 1.0
    assert m["ndcg"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    with pytest.raises(ValueError, match="rate_per_s"):
        T.replay_requests("http://x", [], ["A"], rate_per_s=0)
