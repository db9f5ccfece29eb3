"""Serving benchmark: what each Ray Serve hop costs against what the models cost.

One run measures, on loopback against a local Ray:
1. a bare single deployment behind a FastAPI ingress (returns a fixed answer),
2. the bare three-hop topology (ingress -> no-op -> no-op),
3. the real pipeline, fused (ingress[inputs, two-tower, HCN] -> batched ranker),
4. the real pipeline, split (ingress -> retrieval -> coarse -> ranker),
each at closed-loop maximum throughput (`concurrency` clients for `duration_s`) and at an
open-loop rate of half the bare deployment's maximum (fixed arrival times, latency counted from
the intended send time so a stalled server is not hidden: no coordinated omission).
Also the HNSW index's recall@1000 against exact search and the ranker's cost per candidate.

The catalogue is `n_items` items with randomly initialised models of the production shapes
(speed does not depend on what the weights learned); the users' BSE tables and seen sets are
written straight to Redis under a scratch prefix that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import multiprocessing as mp
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.proc_stats import cpu_s, pids_by_role

log = logging.getLogger(__name__)

USERS = 500


# ---- load generation (run in a child process, so the client does not share the driver's GIL) ----

def _load_worker(url: str, mode: str, concurrency: int, duration_s: float, rate_rps: float, seed: int) -> dict:
    import httpx

    rng = np.random.default_rng(seed)
    bodies = [{"user_id": f"b{rng.integers(USERS)}", "k": 20} for _ in range(4096)]

    async def main() -> dict:
        lat: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            t_end = time.perf_counter() + duration_s

            async def one(body: dict, t_sched: float) -> None:
                nonlocal errors
                try:
                    r = await client.post("/v1/recommend", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append((time.perf_counter() - t_sched) * 1000)
                errors += not ok

            t0 = time.perf_counter()
            if mode == "closed":
                async def loop(w: int) -> None:
                    n = w
                    while time.perf_counter() < t_end:
                        await one(bodies[n % len(bodies)], time.perf_counter())
                        n += concurrency
                await asyncio.gather(*(loop(w) for w in range(concurrency)))
            else:
                tasks = []
                n_req = int(duration_s * rate_rps)
                for i in range(n_req):
                    t_sched = t0 + i / rate_rps
                    await asyncio.sleep(max(0.0, t_sched - time.perf_counter()))
                    tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], t_sched)))
                await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
        a = np.asarray(lat) if lat else np.zeros(1)
        return {"n": len(lat), "errors": errors, "rps": len(lat) / wall, "p50_ms": float(np.percentile(a, 50)),
                "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "wall_s": wall,
                "cpu_s": time.process_time() - cpu0}

    cpu0 = time.process_time()
    return asyncio.run(main())


def measure(url: str, mode: str, concurrency: int = 16, duration_s: float = 8.0, rate_rps: float = 0.0,
            warmup_s: float = 2.0, after_warmup=None) -> dict:
    """One load run from a child process after a warm-up; after_warmup() is called between the two."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(_load_worker, (url, "closed", 4, warmup_s, 0.0, 1))
        if after_warmup is not None:
            after_warmup()
        return pool.apply(_load_worker, (url, mode, concurrency, duration_s, rate_rps, 0))


# ---- bare topologies ----------------------------------------------------------------------------

def _bare_apps():
    from fastapi import FastAPI
    from ray import serve

    bare_api = FastAPI()
    fixed = {"request_id": "x", "items": [{"item_id": str(i), "score": 1.0} for i in range(20)], "variant": "A",
             "model_versions": {}, "degraded": False, "timings_ms": {}}

    @serve.deployment(name="bare_ingress")
    @serve.ingress(bare_api)
    class BareIngress:
        def __init__(self, nxt: Any = None):
            self.nxt = nxt

        @bare_api.post("/v1/recommend")
        async def recommend(self, body: dict) -> dict:
            if self.nxt is not None:
                await self.nxt.remote(body)
            return fixed

    @serve.deployment(name="hop")
    class Hop:
        def __init__(self, nxt: Any = None):
            self.nxt = nxt

        async def __call__(self, body: dict) -> dict:
            if self.nxt is not None:
                await self.nxt.remote(body)
            return body

    single = BareIngress.options(ray_actor_options={"num_cpus": 0.25}).bind()
    hop2 = Hop.options(name="hop2", ray_actor_options={"num_cpus": 0.25}).bind()
    hop1 = Hop.options(name="hop1", ray_actor_options={"num_cpus": 0.25}).bind(hop2)
    three = BareIngress.options(ray_actor_options={"num_cpus": 0.25}).bind(hop1)
    return single, three


# ---- the real pipeline's world --------------------------------------------------------------------

def save_bench_models(root: Path, n_items: int, n_users: int = USERS, dim: int = 64, seed: int = 0,
                      listwise_ranker: str | None = None) -> None:
    """Randomly initialised two-tower, HCN and ranker of the production shapes, `n_items` items.

    listwise_ranker: also save a listwise ranker (order + like heads) under this model name."""
    import torch

    from features.model_store import save_artifact
    from models import HCN, CtrRanker, HcnConfig, RankerConfig, TwoTower, TwoTowerConfig
    from models.layers import Vocab

    torch.manual_seed(seed)
    voc = {"user": Vocab("user", [f"b{i}" for i in range(n_users)]), "item": Vocab("item", [f"i{i}" for i in range(n_items)]),
           "item_cat": Vocab("item_cat", [f"c{i}" for i in range(20)])}
    dims = dict(n_users=voc["user"].size, n_items=voc["item"].size, n_item_cats=voc["item_cat"].size, dim=dim)
    cats = torch.as_tensor(np.r_[0, np.arange(n_items) % 20 + 1, np.zeros(voc["item"].n_oov_buckets)], dtype=torch.long)
    for name, model in (("two_tower", TwoTower(TwoTowerConfig(**dims))),
                        ("hcn", HCN(HcnConfig(**dims, long_len=50, short_len=10, n_iters=2))),
                        ("ranker", CtrRanker(RankerConfig(**dims, long_len=1000))),
                        *([(listwise_ranker, CtrRanker(RankerConfig(**dims, long_len=1000, listwise=True)))]
                          if listwise_ranker else [])):
        model.set_item_categories(cats)
        save_artifact(name, "bench", model.eval(), model.config, voc, {}, {"bench": True}, root=root)


def _write_user_state(settings, root: Path, n_items: int, hist_len: int = 200, seed: int = 0) -> None:
    """BSE sequences and tables for the bench users (ranker 'bench'), their seen sets, popularity."""
    import redis

    from features.bse import Behaviour, RedisBseStore, TableVersion
    from features.bse.embeddings import VocabItemEmbeddings
    from features.keys import PopularityKeys
    from features.model_store import artifact_path, load_vocabs
    from models.sdim_hash import SdimConfig, SdimHasher

    keys = PopularityKeys(settings.redis_prefix)
    path = artifact_path("ranker", "bench", root)
    emb = VocabItemEmbeddings(np.load(path / "item_embeddings.npy"), load_vocabs("ranker", "bench", root)["item"])
    store = RedisBseStore.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                   versions=[TableVersion(SdimHasher(SdimConfig(dim=emb.dim)), emb, model_version="bench")])
    rng = np.random.default_rng(seed)
    r = redis.Redis.from_url(settings.redis_url)
    pipe = r.pipeline(transaction=False)
    for u in range(USERS):
        items = [f"i{k}" for k in rng.integers(0, n_items, hist_len)]
        store.apply_batch([Behaviour(f"b{u}", i) for i in items])
        pipe.sadd(keys.seen(f"b{u}"), *items)
    pipe.zadd(keys.popular, {f"i{k}": float(n_items - k) for k in range(2000)})
    pipe.execute()


def _clean(settings) -> None:
    import redis

    r = redis.Redis.from_url(settings.redis_url)
    keys = list(r.scan_iter(match=f"{settings.redis_prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        r.unlink(*keys[i:i + 5000])


def ann_recall(root: Path, n_queries: int = 200, k: int = 1000, seed: int = 0) -> dict:
    """HNSW recall@k against exact top-k on the two-tower item matrix, for live-style user vectors."""
    from scoring.config import ModelRef
    from scoring.servables import RetrievalServable

    ref = ModelRef(name="two_tower", version="bench")
    exact = RetrievalServable(ref, str(root))
    t = time.perf_counter()
    hnsw = RetrievalServable(ref, str(root), index="hnsw", hnsw_ef_search=max(1200, k))
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    n_items = len(exact.item_ids)
    recalls, t_exact, t_hnsw = [], 0.0, 0.0
    for q in range(n_queries):
        u = exact.user_vector(f"b{q % USERS}", [f"i{x}" for x in rng.integers(0, n_items, 50)])
        t = time.perf_counter()
        e, _ = exact.top_n(u, k)
        t_exact += time.perf_counter() - t
        t = time.perf_counter()
        a, _ = hnsw.top_n(u, k)
        t_hnsw += time.perf_counter() - t
        recalls.append(len(set(e) & set(a)) / k)
    return {"ann_recall_at_1000_vs_exact": float(np.mean(recalls)), "exact_top1000_ms": 1000 * t_exact / n_queries,
            "hnsw_top1000_ms": 1000 * t_hnsw / n_queries, "hnsw_build_s": build_s}


def ranker_cost(root: Path, n_candidates: int = 200, reps: int = 30) -> dict:
    """The fine ranker in-process for one user and `n_candidates` candidates (one torch thread)."""
    import torch

    from scoring.config import ModelRef
    from scoring.servables import RankerServable

    torch.set_num_threads(1)
    rk = RankerServable(ModelRef(name="ranker", version="bench"), str(root))
    rng = np.random.default_rng(0)
    c = rk.model.config
    tables = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32)
    hist = [f"i{x}" for x in rng.integers(0, len(rk.vocabs["item"]), 50)]
    items = [f"i{x}" for x in rng.integers(0, len(rk.vocabs["item"]), n_candidates)]
    rk.score("b1", hist, items, tables, None, None)
    t = time.perf_counter()
    for _ in range(reps):
        rk.score("b1", hist, items, tables, None, None)
    ms = 1000 * (time.perf_counter() - t) / reps
    return {"ranker_ms_per_request_200": ms, "ranker_us_per_candidate": 1000 * ms / n_candidates}


def _median_ms(fn, reps: int) -> float:
    """Median CPU time of fn() in ms after one warm-up call. CPU time of the calling thread, not wall
    time: with one torch and one BLAS thread all the work runs on it, so it is the request's cost,
    while wall time on a shared machine would also count the turns other processes take on the core
    (and process time the driver's background threads); the median, not the mean, because the cache
    still suffers from the neighbours."""
    return _median_clock_ms(fn, reps, time.thread_time)


def _median_clock_ms(fn, reps: int, clock) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = clock()
        fn()
        times.append(clock() - t)
    return 1000 * float(np.median(times))


@functools.lru_cache(maxsize=2)
def _bench_ids(n_items: int) -> np.ndarray:
    """The bench catalogue's ids i0..i<n-1>, made once (the batch sweep draws 16 requests)."""
    return np.asarray([f"i{x}" for x in range(n_items)])


def _bench_request(rng: np.random.Generator, items: "int | np.ndarray", n_candidates: int, hist_len: int = 200) -> dict:
    """One bench user's inputs: a history of `hist_len` catalogue items and `n_candidates` candidates
    (n_candidates at most the catalogue). items: the catalogue's size (bench ids i0..) or its ids."""
    ids = _bench_ids(items) if isinstance(items, int) else np.asarray(items)
    return {"user_id": f"b{rng.integers(USERS)}", "hist": list(rng.choice(ids, hist_len)),
            "items": list(rng.choice(ids, min(n_candidates, len(ids)), replace=False))}


def in_process_costs(root: Path, rankers: tuple[str, ...] = ("ranker",), candidate_top_k: int = 1000,
                     coarse_top_k: int = 200, reps: int = 20, seed: int = 0, version: str = "bench",
                     suffix: str = "") -> dict:
    """Each stage's in-process cost of one request on one torch thread (median ms), no Ray, no Redis:
    retrieval = user vector + exact top-`candidate_top_k`; coarse = HCN over those candidates;
    ranker = both heads over `coarse_top_k` candidates with BSE tables (per ranker model name).
    Uses only the servables' single-request API, so the same function measures older code too.
    Keys end in `suffix` (another set of models, e.g. "_ml100k_demo")."""
    import torch

    from scoring.config import ModelRef
    from scoring.servables import CoarseServable, RankerServable, RetrievalServable

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    ret = RetrievalServable(ModelRef(name="two_tower", version=version), str(root))
    req = _bench_request(rng, ret.item_ids, candidate_top_k)
    out = {f"in_process_retrieval_ms{suffix}": _median_ms(lambda: ret.top_n(ret.user_vector(req["user_id"], req["hist"]),
                                                                            candidate_top_k), reps)}
    del ret
    # the shipped backend (ServeConfig.coarse_backend) and eager torch, side by side
    for backend, key in (("torchscript", f"in_process_coarse_ms{suffix}"), ("eager", f"in_process_coarse_ms_eager{suffix}")):
        coarse = CoarseServable(ModelRef(name="hcn", version=version), str(root), backend=backend)
        out[key] = _median_ms(lambda: coarse.score(req["user_id"], req["hist"], req["items"], None, None), reps)
        out[key.replace("_ms", "_backend")] = coarse.backend  # what ran: a trace that failed its check runs eagerly
        del coarse
    for name in rankers:
        rk = RankerServable(ModelRef(name=name, version=version), str(root))
        c = rk.model.config
        tables = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32)
        items = req["items"][:coarse_top_k]
        key = "in_process_ranker_ms" + ("" if name == "ranker" else f"_{name}") + suffix
        out[key] = _median_ms(lambda: rk.score_heads(req["user_id"], req["hist"], items, tables, None, None), reps)
    return out


def input_costs(settings, n_candidates: int = 1000, history_len: int = 200, reps: int = 30, seed: int = 0) -> dict:
    """The ingress's input reads for one request, CPU ms on one thread (median) against the real
    Redis and Feast (bench users written by _write_user_state): `in_process_inputs_ms` = history +
    the ranker version's BSE tables + the seen-set check of the candidates + the user's feature row
    (the serving path, registry resolved once); and the user-feature read both ways:
    `user_features_feast_ms` (FeatureStore.get_online_features, as before) and
    `user_features_fast_ms` (features/feast_online.py), each with `_wall_ms` beside it."""
    import pandas as pd
    import redis

    from features.feast_online import OnlineRowReader
    from features.feast_repo import repo_for_settings
    from features.repo.definitions import USER_FEATURES
    from models.sdim_hash import SdimConfig
    from services.inputs import RedisInputs

    rng = np.random.default_rng(seed)
    repo = repo_for_settings(settings)
    rows = [{"user_id": f"b{u}", "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
             **{n: ("Drama|Comedy" if str(t) == "String" else int(rng.integers(0, 50))) for n, t in USER_FEATURES.items()}}
            for u in range(USERS)]
    repo.push_user_features(pd.DataFrame(rows), offline=False)
    try:
        reader = OnlineRowReader(repo)
        inputs = RedisInputs(redis.Redis.from_url(settings.redis_url), settings.redis_prefix, feast_repo=repo)
        sdim = SdimConfig(dim=64)
        users = [f"b{u}" for u in rng.integers(0, USERS, 64)]
        cands = [f"i{x}" for x in rng.integers(0, 100_000, n_candidates)]
        it = iter(range(10**9))

        def one_request() -> None:
            u = users[next(it) % len(users)]
            inputs.history(u, history_len)
            inputs.bse_tables(u, "bench", sdim)
            inputs.seen(u, cands)
            inputs.user_features(u)

        out = {"in_process_inputs_ms": _median_ms(one_request, reps)}
        for key, fn in (("user_features_feast_ms", lambda: repo.online_user_features([users[next(it) % 64]])),
                        ("user_features_fast_ms", lambda: reader.rows([users[next(it) % 64]]))):
            out[key] = _median_ms(fn, reps)
            out[key.replace("_ms", "_wall_ms")] = _median_clock_ms(fn, reps, time.perf_counter)
        return out
    finally:
        repo.store.teardown()  # the scratch project's online rows and registry entries


def ranker_batch_sweep(root: Path, name: str = "ranker", batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
                       n_candidates: int = 200, reps: int = 10, seed: int = 0) -> dict:
    """The ranker's batched path on one torch thread: per batch size b, the median ms of one batch of b
    requests (different users and histories, `n_candidates` each, with BSE tables) and the same b
    requests scored one by one; `<name>_batch8_speedup` = (8 single requests) / (one batch of 8)."""
    import torch

    from scoring.config import ModelRef
    from scoring.servables import RankerRequest, RankerServable

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    rk = RankerServable(ModelRef(name=name, version="bench"), str(root))
    c = rk.model.config
    n_items = len(rk.vocabs["item"])
    reqs = []
    for _ in range(max(batch_sizes)):
        r = _bench_request(rng, n_items, n_candidates)
        tables = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32)
        reqs.append(RankerRequest(r["user_id"], r["hist"], r["items"], tables))
    out: dict[str, float] = {}
    for b in batch_sizes:
        batch, key = reqs[:b], f"{name}_batch{b}"
        out[f"{key}_ms"] = _median_ms(lambda: rk.score_heads_batch(batch), reps)
        out[f"{key}_singles_ms"] = _median_ms(lambda: [rk.score_heads_batch([r]) for r in batch], reps)
        out[f"{key}_speedup"] = out[f"{key}_singles_ms"] / out[f"{key}_ms"]
    return out


def _ranker_batch_stats(app_name: str, url: str) -> tuple[float, float] | None:
    """(requests, batches) the ranker has scored so far, from its own histogram: the ranker
    deployment's replica, else the ingress's /metrics (its own batcher; with several ingress
    replicas, the one replica that answers). None for an app without either (the bare ones)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    from ray import serve

    try:
        handle = serve.get_deployment_handle("ranker", app_name)
        text = handle.metrics.remote().result(timeout_s=30).decode()
    except Exception:  # no ranker deployment in this app: the ranker runs in the ingress
        try:
            r = httpx.get(f"{url}/metrics", timeout=30)
        except httpx.HTTPError:
            return None
        if r.status_code != 200 or "recstream_ranker_batch_size" not in r.text:
            return None
        text = r.text
    vals = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("recstream_ranker_batch_size")}
    return vals.get("recstream_ranker_batch_size_sum", 0.0), vals.get("recstream_ranker_batch_size_count", 0.0)


# The layout deploy/serve/recstream.yaml and the chart ship for CPU nodes (the goals are read on it too).
SHIPPED_TOPOLOGY = "fused_inproc_ranker"

# topology -> (layout, ranker as its own deployment, ingress replicas)
TOPOLOGIES: dict[str, tuple[str, bool, int]] = {
    "fused": ("fused", True, 1),
    "fused_inproc_ranker": ("fused", False, 1),
    "fused_2_ingress": ("fused", True, 2),
    "fused_inproc_2_ingress": ("fused", False, 2),
    "split": ("split", True, 1),
}

# process roles whose CPU is counted during a maximum-throughput run (cmdline substrings; {app} is the app name)
_ROLES = {"proxy": ("ProxyActor",), "ingress": ("ServeReplica:{app}:ingress", "ServeReplica:{app}:bare_ingress"),
          "ranker": ("ServeReplica:{app}:ranker",),
          "stages": ("ServeReplica:{app}:retrieval", "ServeReplica:{app}:coarse", "ServeReplica:{app}:hop"),
          "ray_system": ("raylet", "gcs_server", "ServeController"), "redis": ("redis-server",), "kafka": ("kafka.Kafka",)}


def _role_pids(app: str) -> dict[str, list[int]]:
    return pids_by_role({role: tuple(t.format(app=app) for t in tags) for role, tags in _ROLES.items()})


def _measure_with_cpu(url: str, app: str, concurrency: int, duration_s: float) -> dict:
    """The closed-loop maximum run, with each process role's CPU over it, in cores (1.0 = one core
    busy for the whole run; the client's from the load process itself) and the ranker's mean batch."""
    pids = _role_pids(app)
    start: dict[str, Any] = {}

    def mark() -> None:
        start.update(batch=_ranker_batch_stats(app, url), cpu={role: cpu_s(p) for role, p in pids.items()},
                     t=time.perf_counter())

    res = measure(url, "closed", concurrency, duration_s, after_warmup=mark)
    wall = time.perf_counter() - start["t"]  # the window the CPU counters span (the run, plus a process hop)
    res["cpu_share"] = {role: (cpu_s(p) - start["cpu"][role]) / wall for role, p in pids.items()}
    res["cpu_share"]["client"] = res["cpu_s"] / res["wall_s"]
    if start["batch"] is not None:
        (s0, c0), (s1, c1) = start["batch"], _ranker_batch_stats(app, url)
        res["ranker_mean_batch"] = (s1 - s0) / max(1.0, c1 - c0)
    return res


def run(settings, work_dir: Path, base_url: str, n_items: int = 100_000, duration_s: float = 8.0,
        concurrency: int = 16, progress=print, demo_artifacts: Path | None = None) -> dict:
    """All serving measurements against the Serve proxy at base_url; returns flat keys (module docstring).

    demo_artifacts: where `recstream demo` saved the ML-100k cascade (models/*/demo-ml100k); when
    they are there, their in-process stage costs are measured too (keys ending `_ml100k_demo`)."""
    from ray import serve

    from services.app import build_app
    from services.config import ServeConfig

    root = Path(work_dir) / "artifacts"
    progress(f"saving bench models ({n_items} items)")
    save_bench_models(root, n_items, listwise_ranker="ranker_listwise")
    out: dict[str, Any] = {"n_items": n_items, "candidate_top_k": 1000, "coarse_top_k": 200, "k": 20,
                           "duration_s": duration_s, "concurrency": concurrency}
    out.update(ann_recall(root))
    out.update(ranker_cost(root))
    out.update(in_process_costs(root, rankers=("ranker", "ranker_listwise")))
    out.update(ranker_batch_sweep(root))
    out.update(ranker_batch_sweep(root, name="ranker_listwise", batch_sizes=(8,)))
    out.update(_demo_costs(demo_artifacts, progress))
    progress(f"ANN recall@1000 {out['ann_recall_at_1000_vs_exact']:.4f}; ranker {out['ranker_ms_per_request_200']:.1f} ms/200")
    s = settings.model_copy(update={"redis_prefix": f"sb{uuid.uuid4().hex[:6]}"})
    _write_user_state(s, root, n_items)
    try:
        out.update(input_costs(s))
        out["in_process_request_ms"] = sum(out[f"in_process_{k}_ms"] for k in ("inputs", "retrieval", "coarse", "ranker"))
        progress(f"in process, one request: {out['in_process_request_ms']:.2f} CPU ms; user features Feast "
                 f"{out['user_features_feast_ms']:.2f} ms, resolved once {out['user_features_fast_ms']:.2f} ms")
        base = base_url
        single, three = _bare_apps()
        results = {}
        for name, app in (("bare_single", single), ("bare_three_hop", three)):
            serve.run(app, name=name, route_prefix=f"/{name}")
            results[name] = {"max": _measure_with_cpu(f"{base}/{name}", name, concurrency, duration_s)}
            progress(f"{name}: {results[name]['max']['rps']:.0f} req/s closed-loop")
        results["bare_single"]["half"] = measure(f"{base}/bare_single", "open", concurrency, duration_s,
                                                 results["bare_single"]["max"]["rps"] / 2)
        serve.delete("bare_three_hop")
        serve.delete("bare_single")
        # generous deadlines: the benchmark measures the models' path, not its fallbacks
        common = dict(artifacts_dir=str(root), user_feature_source="none", deadlines={
            "inputs_timeout_ms": 1000, "candidates_timeout_ms": 2000, "coarse_timeout_ms": 2000, "ranker_timeout_ms": 3000},
            variants={"A": {"share": 1.0, "retrieval": {"name": "two_tower", "version": "bench"},
                            "coarse": {"name": "hcn", "version": "bench"}, "ranker": {"name": "ranker", "version": "bench"}}})
        for name, (layout, ranker_deployment, replicas) in TOPOLOGIES.items():
            cfg = ServeConfig(layout=layout, ranker_deployment=ranker_deployment, num_replicas=replicas, **common)
            serve.run(build_app(s, cfg), name=name, route_prefix=f"/{name}")
            results[name] = {"max": _measure_with_cpu(f"{base}/{name}", name, concurrency, duration_s)}
            # each topology at half of ITS OWN maximum: a rate it sustains, so p99 is service time, not a queue
            results[name]["half"] = measure(f"{base}/{name}", "open", concurrency, duration_s, results[name]["max"]["rps"] / 2)
            if name == "fused":
                out["fused_degraded_sample"] = _sample(f"{base}/{name}")
            progress(f"{name}: {results[name]['max']['rps']:.1f} req/s closed-loop, p99 {results[name]['half']['p99_ms']:.0f} ms "
                     f"at {results[name]['max']['rps'] / 2:.1f} req/s")
            serve.delete(name)
    finally:
        _clean(s)
    bare = results["bare_single"]
    for name, r in results.items():
        out[f"{name}_max_rps"] = r["max"]["rps"]
        out[f"{name}_errors"] = r["max"]["errors"] + r.get("half", {}).get("errors", 0)
        out[f"{name}_p50_ms_at_max"] = r["max"]["p50_ms"]
        out.update({f"{name}_cpu_share_{role}": v for role, v in r["max"]["cpu_share"].items()})
        if "ranker_mean_batch" in r["max"]:
            out[f"{name}_ranker_mean_batch"] = r["max"]["ranker_mean_batch"]
        if "half" in r:
            out[f"{name}_half_load_rps"] = r["max"]["rps"] / 2
            out[f"{name}_p50_ms_at_half_load"] = r["half"]["p50_ms"]
            out[f"{name}_p99_ms_at_half_load"] = r["half"]["p99_ms"]
        if name != "bare_single":
            out[f"{name}_max_rps_ratio_vs_bare"] = r["max"]["rps"] / bare["max"]["rps"]
            if "half" in r:
                out[f"{name}_p99_ratio_vs_bare"] = r["half"]["p99_ms"] / bare["half"]["p99_ms"]
    out["half_load_rps"] = bare["max"]["rps"] / 2
    out["ranker_mean_batch"] = out["fused_ranker_mean_batch"]
    out["shipped_topology"] = SHIPPED_TOPOLOGY
    out.update({f"shipped_{k}": out[f"{SHIPPED_TOPOLOGY}_{k}"] for k in (
        "max_rps", "max_rps_ratio_vs_bare", "p99_ratio_vs_bare", "p99_ms_at_half_load", "ranker_mean_batch")})
    out.update({f"cpu_share_{role}": out[f"fused_cpu_share_{role}"] for role in ("ingress", "ranker", "proxy", "client")})
    return out


def _demo_costs(demo_artifacts: Path | None, progress) -> dict:
    """In-process stage costs of the ML-100k demo's cascade, when `recstream demo` saved it there."""
    if demo_artifacts is None:
        return {}
    from features.model_store import artifact_path

    try:
        for name in ("two_tower", "hcn", "ranker"):
            artifact_path(name, "demo-ml100k", demo_artifacts)
    except Exception as e:  # no demo run yet: said in the report, not an error
        progress(f"no ML-100k demo models under {demo_artifacts} ({e}); run `recstream demo` to measure them too")
        return {}
    return in_process_costs(Path(demo_artifacts), candidate_top_k=1000, coarse_top_k=200, version="demo-ml100k",
                            suffix="_ml100k_demo")


def _sample(url: str) -> dict:
    import httpx

    body = httpx.post(f"{url}/v1/recommend", json={"user_id": "b1", "k": 20}, timeout=30).json()
    return {"degraded_reasons": body.get("degraded_reasons"), "timings_ms": body.get("timings_ms")}


def markdown(res: dict) -> str:
    lines = ["# Serving benchmark", "",
             "Written by `recstream bench serving` (benchmarks/serving.py, demo/ml100k_world.py). "
             "The two parts may come from different runs; each says when it was measured.", ""]
    if "n_items" in res:
        lines += [f"## Ray Serve hops vs the real pipeline (measured {res.get('throughput_measured_at', '?')})", ""]
        lines += _throughput_markdown(res)
    if "cascade_recall_at_20_ml100k" in res:
        lines += ["", f"## MovieLens-100k: the cascade served over HTTP (measured {res.get('ml100k_measured_at', '?')})", ""]
        lines += _cascade_markdown(res)
    return "\n".join(lines) + "\n"


def _cascade_markdown(res: dict) -> list[str]:
    seeds = sorted(int(k.rsplit("seed", 1)[1]) for k in res if k.startswith("cascade_recall_at_20_ml100k_seed"))
    lines = ["Training interactions (train + valid, standard protocol) streamed through Kafka -> popularity + "
             "feature-writer -> Feast; the cascade trained per seed on the stream-joined splits "
             "(pipelines/training/cascade.py: two-tower, HCN on the two-tower's out-of-fold candidates, listwise "
             "ranker, fusion weights chosen on validation); the bse-encoder built the ranker version's SDIM tables "
             "from the topic; then every test user's top 20 asked of the live HTTP API, once per prefix of the "
             "cascade (variants with `cascade: retrieval|coarse`, and the ranker's order alone), and of the same "
             "request path offline (dataset histories, in-memory BSE).", "",
             "| seed | two-tower R@20 | two-tower→HCN R@20 | ranker alone R@20 | cascade R@20 | cascade NDCG@20 | "
             "offline path R@20 | retrieval R@1000 | coarse R@200 | train CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    row = lambda sfx: (f"{res[f'two_tower_only_recall_at_20_ml100k{sfx}']:.4f} | {res[f'two_tower_hcn_recall_at_20_ml100k{sfx}']:.4f} | "  # noqa: E731
                       f"{res[f'ranker_alone_recall_at_20_ml100k{sfx}']:.4f} | {res[f'cascade_recall_at_20_ml100k{sfx}']:.4f} | "
                       f"{res[f'cascade_ndcg_at_20_ml100k{sfx}']:.4f} | {res[f'offline_recall_at_20_ml100k{sfx}']:.4f} | "
                       f"{res[f'retrieval_recall_at_1000_ml100k{sfx}']:.4f} | {res[f'coarse_recall_at_200_ml100k{sfx}']:.4f} | "
                       f"{res[f'train_cpu_seconds_ml100k{sfx}']:.0f}")
    lines += [f"| {sd} | {row(f'_seed{sd}')} |" for sd in seeds]
    lines.append(f"| mean | {row('')} |")
    lines += ["", "| measure | value |", "|---|---:|",
              f"| cascade Recall@20 over HTTP, mean ± std (goal ≥ 0.30) | {res['cascade_recall_at_20_ml100k']:.4f} ± "
              f"{res['cascade_recall_at_20_ml100k_std']:.4f} |",
              f"| cascade NDCG@20 over HTTP, mean ± std (goal ≥ 0.125) | {res['cascade_ndcg_at_20_ml100k']:.4f} ± "
              f"{res['cascade_ndcg_at_20_ml100k_std']:.4f} |",
              f"| cascade ≥ two-tower and ≥ two-tower→HCN on every seed | "
              f"{'yes' if res['cascade_ge_prefixes_every_seed'] else 'NO'} |",
              f"| served − offline Recall@20, mean (goal within 0.005) | "
              f"{res['served_recall_at_20_ml100k'] - res['offline_recall_at_20_ml100k']:+.4f} |",
              f"| users with identical top 20 served and offline | {res['ml100k_identical_top_k_share']:.1%} of "
              f"{res['ml100k_users']:.0f} |",
              f"| degraded answers | {res['ml100k_degraded_share']:.2%} |"]
    return lines


_TOPOLOGY_LABELS = {"bare_single": "bare single deployment", "bare_three_hop": "bare three hops",
                    "fused": "real pipeline, fused (ranker deployment)",
                    "fused_inproc_ranker": "real pipeline, fused, ranker in the ingress",
                    "fused_2_ingress": "real pipeline, fused, 2 ingress replicas",
                    "fused_inproc_2_ingress": "real pipeline, fused, ranker in the ingress, 2 ingress replicas",
                    "split": "real pipeline, split"}


def _throughput_markdown(res: dict) -> list[str]:
    own_half = "fused_half_load_rps" in res  # older result files measured everyone at the bare half load
    lines = [f"Catalogue {res['n_items']:,} items, {res['candidate_top_k']} -> {res['coarse_top_k']} -> {res['k']}; "
             f"{res['concurrency']} closed-loop clients for {res['duration_s']:.0f} s; then an open loop at "
             + ("half of each topology's own maximum (a rate it sustains, so p99 is service time, not queueing)."
                if own_half else f"{res['half_load_rps']:.0f} req/s (half the bare deployment's maximum).")
             + " Loopback, one machine. CPU: cores busy during the maximum run (1.0 = one core).", "",
             "| topology | max req/s | / bare | p50 ms at max | half-load req/s | p50 ms | p99 ms | p99 / bare | "
             "CPU ingress | CPU ranker | CPU proxy | CPU client | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda v, fmt=".1f": "" if v is None else format(v, fmt)  # noqa: E731
    for key, label in _TOPOLOGY_LABELS.items():
        if f"{key}_max_rps" not in res:
            continue
        g = lambda k: res.get(f"{key}_{k}")  # noqa: E731
        lines.append(f"| {label} | {g('max_rps'):.1f} | {f(g('max_rps_ratio_vs_bare'), '.2f')} | {g('p50_ms_at_max'):.1f} | "
                     f"{f(g('half_load_rps'))} | {f(g('p50_ms_at_half_load'))} | {f(g('p99_ms_at_half_load'))} | "
                     f"{f(g('p99_ratio_vs_bare'), '.2f')} | {f(g('cpu_share_ingress'), '.2f')} | "
                     f"{f(g('cpu_share_ranker'), '.2f')} | {f(g('cpu_share_proxy'), '.2f')} | "
                     f"{f(g('cpu_share_client'), '.2f')} | {g('errors')} |")
    shipped = []
    if "shipped_topology" in res:
        label = _TOPOLOGY_LABELS[res["shipped_topology"]]
        shipped = [f"| shipped layout ({label}): max throughput / bare (goal >= 0.5) | {res['shipped_max_rps_ratio_vs_bare']:.2f} |",
                   f"| shipped layout: p99 at half its maximum / bare's (goal <= 2) | {res['shipped_p99_ratio_vs_bare']:.2f} |",
                   f"| shipped layout: ranker mean batch at maximum load (goal >= 4) | {res['shipped_ranker_mean_batch']:.2f} |"]
    lines += ["", "| measure | value |", "|---|---:|", *shipped,
              f"| fused, ranker deployment: max throughput / bare | {res['fused_max_rps_ratio_vs_bare']:.2f} |",
              f"| fused, ranker deployment: p99 at half load / bare | {res['fused_p99_ratio_vs_bare']:.2f} |",
              f"| fused, ranker deployment: ranker mean batch at maximum load | {res['ranker_mean_batch']:.2f} |",
              f"| ranker, 200 candidates, one thread | {res['ranker_ms_per_request_200']:.2f} ms "
              f"({res['ranker_us_per_candidate']:.1f} us/candidate) |",
              *_in_process_rows(res),
              f"| HNSW recall@1000 vs exact | {res['ann_recall_at_1000_vs_exact']:.4f} |",
              f"| exact top-1000 / HNSW top-1000 | {res['exact_top1000_ms']:.2f} ms / {res['hnsw_top1000_ms']:.2f} ms |"]
    if not own_half and res["half_load_rps"] > res["fused_max_rps"]:
        lines += ["", f"The open-loop rate ({res['half_load_rps']:.0f} req/s) is above what the real pipeline sustains "
                      f"({res['fused_max_rps']:.0f} req/s): its latencies at that rate are queueing, not service time. "
                      f"One idle request through the fused app: {res['fused_degraded_sample']['timings_ms']} ms."]
    return lines


def _in_process_rows(res: dict) -> list[str]:
    """The in-process stage costs and the ranker's batch sweep (absent in older result files)."""
    if "in_process_ranker_ms" not in res:
        return []
    sweep = ", ".join(f"{b}: {res[f'ranker_batch{b}_ms'] / b:.2f}" for b in (1, 2, 4, 8, 16) if f"ranker_batch{b}_ms" in res)
    rows = []
    if "in_process_request_ms" in res:
        rows += [f"| in process, one request, CPU ms (goal <= 8): inputs + retrieval + coarse + ranker | "
                 f"{res['in_process_request_ms']:.2f} = {res['in_process_inputs_ms']:.2f} + {res['in_process_retrieval_ms']:.2f} + "
                 f"{res['in_process_coarse_ms']:.2f} + {res['in_process_ranker_ms']:.2f} |",
                 *([f"| coarse stage, CPU ms: HCN user tower traced (TorchScript, frozen) / eager torch | "
                    f"{res['in_process_coarse_ms']:.2f} / {res['in_process_coarse_ms_eager']:.2f} |"]
                   if "in_process_coarse_ms_eager" in res else []),
                 f"| user features, one user, CPU ms (wall ms): Feast get_online_features / registry resolved once | "
                 f"{res['user_features_feast_ms']:.2f} ({res['user_features_feast_wall_ms']:.2f}) / "
                 f"{res['user_features_fast_ms']:.2f} ({res['user_features_fast_wall_ms']:.2f}) |"]
    else:
        rows.append(f"| in process, one request, CPU ms: retrieval / coarse / ranker | {res['in_process_retrieval_ms']:.2f} / "
                    f"{res['in_process_coarse_ms']:.2f} / {res['in_process_ranker_ms']:.2f} |")
    if "in_process_ranker_ms_ml100k_demo" in res:
        rows.append(f"| ML-100k demo models, CPU ms: retrieval / coarse / ranker | {res['in_process_retrieval_ms_ml100k_demo']:.2f} / "
                    f"{res['in_process_coarse_ms_ml100k_demo']:.2f} / {res['in_process_ranker_ms_ml100k_demo']:.2f} |")
    return rows + [f"| listwise ranker (order + like heads), CPU ms | {res['in_process_ranker_ms_ranker_listwise']:.2f} |",
                   f"| ranker batch of 8 vs 8 single requests (speedup, goal >= 3) | {res['ranker_batch8_speedup']:.2f}x |",
                   f"| ranker CPU ms per request by batch size | {sweep} |"]


class _ListPopular:
    def __init__(self, items: list[tuple[str, float]]):
        self.items = items

    def popular(self, n: int) -> list[tuple[str, float]]:
        return self.items[:n]


def _ranked_metrics(lists: dict[str, list[str]], targets: dict[str, str], k: int) -> tuple[float, float]:
    """(Recall@k, NDCG@k) of one held-out item per user over the served lists."""
    rec, ndcg = [], []
    for u, items in lists.items():
        top = items[:k]
        hit = targets[u] in top
        rec.append(float(hit))
        ndcg.append(1.0 / np.log2(top.index(targets[u]) + 2) if hit else 0.0)
    return float(np.mean(rec)), float(np.mean(ndcg))


def ask_all(base_url: str, users: list[str], k: int, concurrency: int = 4,
            variant: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Every user's top k from the live API ({user: items}, users whose answer was degraded);
    `variant`: ask that variant through the replay header (not logged as served traffic)."""
    import httpx

    headers = {"x-recstream-replay": variant} if variant else {}
    degraded: list[str] = []

    async def main() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            async def one(u: str) -> None:
                async with sem:
                    r = await client.post("/v1/recommend", json={"user_id": u, "k": k}, headers=headers)
                    r.raise_for_status()
                    body = r.json()
                    if body["degraded"]:
                        log.warning("served answer for %s (%s) degraded: %s", u, variant, body["degraded_reasons"])
                        degraded.append(u)
                    out[u] = [i["item_id"] for i in body["items"]]
            await asyncio.gather(*(one(u) for u in users))
        return out

    return asyncio.run(main()), degraded


def served_vs_offline(base_url: str, config, cases, offline, k: int = 20, concurrency: int = 4,
                      variants: tuple[str, ...] = ()) -> dict:
    """Recall@k of each test user's held-out item, asked of the live HTTP API and of the same
    request path run offline on `offline` (demo.ml100k_world.OfflineInputs).

    Args:
        config: the ServeConfig the live app was deployed with (same artefacts, same variants).
        cases: one row per user: user_id, test_item_id.
        variants: also ask each of these variants (replay header) over HTTP: keys
            <variant>_served_recall_at_<k>_ml100k and <variant>_served_ndcg_at_<k>_ml100k.
    """
    from services.api import RecommendRequest
    from services.inputs import InMemoryInputs
    from services.runtime import local_recommender

    users = list(cases["user_id"])
    targets = dict(zip(cases["user_id"], cases["test_item_id"]))
    t = time.perf_counter()
    served, degraded = ask_all(base_url, users, k, concurrency)
    served_s = time.perf_counter() - t
    inputs = InMemoryInputs(histories=offline.histories, user_rows=offline.user_rows, tables=offline.tables,
                            item_rows=offline.item_rows)
    rec = local_recommender(config, inputs, popular=_ListPopular(offline.popular), seed=0)

    async def offline_all() -> dict[str, list[str]]:
        return {u: [i.item_id for i in (await rec.recommend(RecommendRequest(user_id=u, k=k))).items] for u in users}

    off = asyncio.run(offline_all())
    recall, ndcg = _ranked_metrics(served, targets, k)
    out = {f"served_recall_at_{k}_ml100k": recall, f"served_ndcg_at_{k}_ml100k": ndcg,
           f"offline_recall_at_{k}_ml100k": _ranked_metrics(off, targets, k)[0],
           "ml100k_identical_top_k_share": float(np.mean([served[u] == off[u] for u in users])),
           "ml100k_users": len(users), "ml100k_served_requests_s": served_s,
           "ml100k_degraded_share": len(degraded) / max(1, len(users))}
    for name in variants:
        lists, bad = ask_all(base_url, users, k, concurrency, variant=name)
        out[f"{name}_served_recall_at_{k}_ml100k"], out[f"{name}_served_ndcg_at_{k}_ml100k"] = _ranked_metrics(lists, targets, k)
        out["ml100k_degraded_share"] += len(bad) / max(1, len(users))
    return out


# ---- ML-100k: the cascade served over HTTP, per seed -------------------------------------------

# One variant per prefix of the cascade, all the same versions; only FULL takes traffic, the
# others are asked through the replay header, so one deployment serves all four orders.
FULL = "cascade"
PREFIX_VARIANTS = {"two_tower_only": {"cascade": "retrieval"}, "two_tower_hcn": {"cascade": "coarse"},
                   "ranker_alone": {"fusion": {"ranker_weight": 1.0}}}


def cascade_variants(version: str) -> dict[str, dict]:
    ref = lambda name: {"name": name, "version": version}  # noqa: E731
    models = {"retrieval": ref("two_tower"), "coarse": ref("hcn"), "ranker": ref("ranker")}
    return {FULL: {"share": 1.0, **models}, **{n: {"share": 0.0, **models, **v} for n, v in PREFIX_VARIANTS.items()}}


def ml100k_cascade_served(s, work: Path, base_url: str, seeds: tuple[int, ...] = (0, 1, 2), cascade_set: tuple[str, ...] = (),
                          progress=print) -> dict:
    """ML-100k's training interactions through the stream (once), then per seed: the cascade
    trained (pipelines/training/cascade.py) on the stream-joined splits, saved, the ranker
    version's BSE tables built by a bse-encoder, deployed, and every test user's top 20 asked of
    the live API for the full cascade and each prefix, and of the same request path offline.

    Returns flat keys: per seed <key>_seed<N>, and the mean (and _std where it matters) over
    seeds of cascade / prefix Recall@20 and NDCG@20 served over HTTP, retrieval recall@1000 and
    coarse recall@200 (the offline evaluation of the same artefacts on the test split), served
    vs offline Recall@20 of the full cascade, training seconds.
    """
    from ray import serve

    from demo.ml100k_world import Ml100kWorld, build_bse, cascade_splits, offline_inputs, stream_ml100k
    from pipelines.data.datasets import ml100k_test_cases
    from pipelines.training.cascade import (PromotionRefused, config_from_overrides, evaluate_cascade, save_cascade,
                                            train_cascade)
    from services.app import build_app
    from services.config import ServeConfig

    root = Path(work) / "ml100k-artifacts"
    cfg = config_from_overrides(list(cascade_set))
    stream_s = stream_ml100k(s, root, progress=progress)
    splits = cascade_splits(s)
    cases = ml100k_test_cases()
    per_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        version = f"ml100k-s{seed}"
        progress(f"seed {seed}: training the cascade on the stream-joined splits ...")
        result = train_cascade(splits, cfg, seed)
        try:
            save_cascade(result, splits, version, root)
        except PromotionRefused as e:  # the versions are named explicitly below; the refusal is reported
            progress(f"seed {seed}: {e}")
        test = evaluate_cascade(result, None, splits, "test")
        bse_s = build_bse(s, root, version, progress=progress)
        config = ServeConfig(artifacts_dir=str(root), variants=cascade_variants(version),
                             deadlines={"inputs_timeout_ms": 2000, "candidates_timeout_ms": 3000, "coarse_timeout_ms": 3000,
                                        "ranker_timeout_ms": 5000, "redis_timeout_ms": 1000})
        name = f"ml100k{seed}"
        serve.run(build_app(s, config), name=name, route_prefix=f"/{name}")
        try:
            world = Ml100kWorld(root, {m: version for m in ("two_tower", "hcn", "ranker")}, cases, {}, float("nan"))
            res = served_vs_offline(f"{base_url}/{name}", config, cases, offline_inputs(s, world),
                                    variants=tuple(PREFIX_VARIANTS))
        finally:
            serve.delete(name)
        n, m = cfg.retrieval_top_n, cfg.coarse_top_n
        row = {"cascade_recall_at_20": res["served_recall_at_20_ml100k"], "cascade_ndcg_at_20": res["served_ndcg_at_20_ml100k"],
               "served_recall_at_20": res["served_recall_at_20_ml100k"], "offline_recall_at_20": res["offline_recall_at_20_ml100k"],
               "identical_top_k_share": res["ml100k_identical_top_k_share"], "degraded_share": res["ml100k_degraded_share"],
               "retrieval_recall_at_1000": test[f"retrieval_recall_at_{n}"], "coarse_recall_at_200": test[f"coarse_recall_at_{m}"],
               "offline_eval_cascade_recall_at_20": test["cascade_recall_at_20"],
               "train_cpu_seconds": float(sum(result.cpu_seconds.values())), "bse_seconds": bse_s,
               "served_requests_s": res["ml100k_served_requests_s"]}
        for prefix in PREFIX_VARIANTS:
            row[f"{prefix}_recall_at_20"] = res[f"{prefix}_served_recall_at_20_ml100k"]
            row[f"{prefix}_ndcg_at_20"] = res[f"{prefix}_served_ndcg_at_20_ml100k"]
        row.update({f"fusion_{k}": v for k, v in result.fusion.model_dump().items()})
        per_seed[seed] = row
        progress(f"seed {seed}: served cascade R@20 {row['cascade_recall_at_20']:.4f} (offline path "
                 f"{row['offline_recall_at_20']:.4f}), two-tower {row['two_tower_only_recall_at_20']:.4f}, two-tower->HCN "
                 f"{row['two_tower_hcn_recall_at_20']:.4f}, ranker alone {row['ranker_alone_recall_at_20']:.4f}")
    out: dict[str, float] = {"cascade_seeds": float(len(seeds)), "ml100k_stream_s": stream_s, "ml100k_users": float(len(cases))}
    for key in per_seed[seeds[0]]:
        vals = np.asarray([per_seed[sd][key] for sd in seeds])
        out[f"{key}_ml100k"] = float(vals.mean())
        out[f"{key}_ml100k_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.update({f"{key}_ml100k_seed{sd}": per_seed[sd][key] for sd in seeds})
    out["ml100k_identical_top_k_share"] = out.pop("identical_top_k_share_ml100k")
    out["ml100k_degraded_share"] = out.pop("degraded_share_ml100k")
    out["cascade_ge_prefixes_every_seed"] = float(all(
        r["cascade_recall_at_20"] >= max(r["two_tower_only_recall_at_20"], r["two_tower_hcn_recall_at_20"]) for r in per_seed.values()))
    out["cascade_settings"] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return out
