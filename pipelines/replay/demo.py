"""The demo's offline A/B: two served variants (the full cascade, and the cascade without its
ranker) compared on the traffic the demo served.

1. Every sampled ML-100k user asks the running server for 10 items; both variants explore with
   epsilon_slate, so each logged slot has a true propensity.
2. The same requests are replayed to variant A and to variant B (paired), before any outcome
   exists, so both answer from the state the logged requests saw.
3. Simulated users click: P(click at slot p) = theta_p * rel(u, item), with theta_p = 1/(p+1)^0.8
   and rel from item-item co-occurrence cosine over all of ML-100k (how close the item is to what
   the user watched), a relevance neither ranker was trained to output. Clicks go to the events
   topic with their request id and slot, as a client would send them.
4. The replay tool reads impressions and clicks back from Kafka and writes the A/B report.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np

from recstream.events import Event, EventType
from recstream.settings import Settings


# Below what the demo's app sustains on 2 CPU cores (about 12 requests/s with 4 in flight, where
# the latency CDFs were queueing time, p50 335 ms), so they show each variant's service time.
REPLAY_RATE_PER_S = 6.0
REPLAY_MAX_IN_FLIGHT = 2


class CooccurrenceUsers:
    """Simulated ML-100k users: relevance = mean of the 5 largest co-occurrence cosines between an
    item and the user's rated items, scaled into a click probability."""

    def __init__(self, seed: int = 0):
        from pipelines.data.movielens import load_ml100k

        inter = load_ml100k().interactions
        self.users = sorted(inter["user_id"].unique(), key=int)
        self.items = sorted(inter["item_id"].unique(), key=int)
        ui = {u: n for n, u in enumerate(self.users)}
        ii = {i: n for n, i in enumerate(self.items)}
        x = np.zeros((len(self.users), len(self.items)), dtype=np.float32)  # (943, 1682)
        x[inter["user_id"].map(ui).to_numpy(), inter["item_id"].map(ii).to_numpy()] = 1.0
        norms = np.maximum(np.linalg.norm(x, axis=0), 1e-6)
        self.cos = (x.T @ x) / norms[:, None] / norms[None, :]  # (I, I)
        np.fill_diagonal(self.cos, 0.0)
        self.x, self.ui, self.ii = x, ui, ii
        self.rng = np.random.default_rng(seed)

    def relevance(self, user_id: str, item_id: str) -> float:
        if user_id not in self.ui or item_id not in self.ii:
            return 0.01
        sims = self.cos[self.ii[item_id]][self.x[self.ui[user_id]] > 0]
        top = np.sort(sims)[-5:] if len(sims) else np.zeros(1)
        return float(np.clip(1.6 * top.mean(), 0.01, 0.9))

    def clicks(self, imp: dict, eta: float = 0.8) -> list[int]:
        return [s["position"] for s in imp["slate"]
                if self.rng.random() < self.relevance(imp["user_id"], s["item_id"]) / (s["position"] + 1) ** eta]


def run_ab(s: Settings, url: str, root: Path, variants: dict[str, Any], out_dir: Path, n_users: int = 200,
           k: int = 10, progress: Callable[[str], None] = print, seed: int = 0) -> dict:
    """variants: the served variants (services.config.VariantConfig, versions pinned). Returns the
    report dict (also written to out_dir)."""
    from tqdm import tqdm

    from pipelines.replay.data import read_kafka
    from pipelines.replay.policies import RankerScorers, VariantPolicy
    from pipelines.replay.report import TrafficResult, run_replay
    from pipelines.replay.traffic import replay_requests
    from recstream.kafka_io import make_producer

    sim = CooccurrenceUsers(seed)
    users = list(np.random.default_rng(seed).choice(sim.users, size=min(n_users, len(sim.users)), replace=False))
    since = int(time.time() * 1000) - 1
    progress(f"A/B: {len(users)} users ask for {k} items each (both variants explore with epsilon_slate)...")
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda u: client.post("/v1/recommend", json={"user_id": u, "k": k}).status_code, users))
    until = int(time.time() * 1000) + 1
    if codes.count(200) != len(users):
        raise RuntimeError(f"A/B: {len(users) - codes.count(200)} of {len(users)} requests failed")

    rlog = read_kafka(s.kafka_bootstrap, s.impressions_topic, s.events_topic, since, until, window_s=600)
    deadline = time.monotonic() + 60
    while len(rlog.impressions) < len(users) and time.monotonic() < deadline:  # the logger sends asynchronously
        time.sleep(1)
        rlog = read_kafka(s.kafka_bootstrap, s.impressions_topic, s.events_topic, since, until, window_s=600)
    imps = rlog.impressions
    progress(f"A/B: {len(imps)} impressions logged; replaying them to A and B "
             f"(paired, at most {REPLAY_RATE_PER_S:g} requests/s)...")
    answers = replay_requests(url, imps, list(variants), rate_per_s=REPLAY_RATE_PER_S,
                              max_in_flight=REPLAY_MAX_IN_FLIGHT,
                              progress=lambda **kw: tqdm(**kw))

    producer = make_producer(s)
    n_clicks = 0
    for imp in imps:
        j = imp.model_dump()
        for p in sim.clicks(j):
            e = Event(event_id=f"demo-click-{imp.request_id}-{p}", user_id=imp.user_id, item_id=imp.slate[p].item_id,
                      type=EventType.click, ts=imp.ts + 2000 + 500 * p, request_id=imp.request_id, position=p)
            producer.send(s.events_topic, key=imp.user_id.encode(), value=e.to_bytes())
            n_clicks += 1
    producer.flush()
    progress(f"A/B: simulated users clicked {n_clicks} of {sum(len(i.slate) for i in imps)} shown items")

    rlog = read_kafka(s.kafka_bootstrap, s.impressions_topic, s.events_topic, since, until, window_s=600)
    # Each variant is replayed as a whole (versions, cascade prefix, fusion) on all the traffic: the
    # served order where it served, its own order from the logged stage scores (re-fused, or the
    # ranker re-computed from the logged inputs) where the other variant served.
    scorers = RankerScorers(str(root))
    policies = {name: variant_policy(name, v, root, scorers) for name, v in variants.items()}
    candidates = list(policies.values())
    dm = scorers.get(next(iter(variants.values())).ranker)
    return run_replay(rlog, candidates, out_dir, direct_model=dm, window_s=600,
                      traffic=TrafficResult(list(variants), answers, k), n_boot=500, seed=seed, served=policies)


def variant_policy(name: str, v: Any, root: Path, scorers) -> Any:
    """A served variant (services.config.VariantConfig) as a replay VariantPolicy: its versions, cascade prefix and fusion (the ranker
    artefact's validated one when the variant names none, as the server resolves it)."""
    from pipelines.replay.policies import VariantPolicy
    from scoring.fusion import manifest_fusion
    from scoring.servables import read_manifest

    fusion = None
    if v.cascade == "ranker":
        fusion = v.fusion or manifest_fusion(read_manifest(v.ranker, str(root)))
    label = {"ranker": "full cascade", "coarse": "two-tower -> HCN", "retrieval": "two-tower"}[v.cascade]
    return VariantPolicy(f"{name}: {label}", {st: getattr(v, st) for st in ("retrieval", "coarse", "ranker")}, fusion,
                         v.cascade, scorers=scorers)
