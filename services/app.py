"""The Ray Serve application: a FastAPI ingress composing the serving stages.

    fused (default): ingress[inputs, retrieval, coarse] -> ranker (batched, GPU-capable)
    split:           ingress[inputs] -> retrieval -> coarse -> ranker, each its own deployment
    ranker_deployment=false: the ranker runs in the ingress too (one hop in all)

Every deployment takes the variants as its `user_config` and nowhere else (not in the bound
args, which Ray Serve hashes into the code version): `serve deploy` or `recstream serve reload`
with new versions calls `reconfigure` on the live replicas; a replica loads the new versions
beside the old ones and swaps them in one assignment, so requests during the swap are answered
by the old set. `recstream serve` applies this app from a Serve config document
(services/serve_file.py), exactly as `serve deploy` does.
"""


import asyncio
import copy
import logging
from typing import Any

import torch
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from features.keys import KeyLayout
from recstream.ids import explicit_pattern
from recstream.redis_io import redis_client
from recstream.settings import Settings
from scoring.servables import pick_device
from services import metrics as m
from services.api import (ERROR_RESPONSES, NOT_READY_RESPONSE, RecommendRequest, RecommendResponse, ScoreRequest,
                          ScoreResponse)
from services.config import ServeConfig
from services.http import install_http_hardening, set_body_read_timeout_ms, set_max_body_bytes
from services.batching import LocalBatcher
from services.impression_log import ImpressionLogger
from services.inputs import PopularItems, RedisInputs
from services.pipeline import Recommender, VariantRuntime
from services.runtime import load_stage, make_stage, parse_variants, variant_runtimes, vectors_for
from services.serve_file import INGRESS_MAX_ONGOING_REQUESTS
from services.stages import StageRequest, StageResult

log = logging.getLogger(__name__)

api = FastAPI(title="recstream", version="0.2.0",
              description="Streaming recommender: two-tower candidates -> HCN coarse rank -> SDIM+DIN fine rank, "
                          "with impression logging and per-variant exploration.")
install_http_hardening(api, ServeConfig.model_fields["max_body_bytes"].default)  # body limit, safe 422s, offline /docs

# This replica's limits and variants, which its OpenAPI document states (set by the ingress).
_schema_limits: dict[str, Any] = {}


def set_schema_limits(**limits: Any) -> None:
    """Called by the ingress. A function, not `_schema_limits.update` in the method: Ray Serve ships
    the ingress class by value, and a module dict its methods name travels as a copy, while a
    module function (like `_openapi`, which FastAPI calls) stays this module's."""
    _schema_limits.clear()
    _schema_limits.update(limits)


def _portable(node: Any) -> Any:
    """FastAPI's schema in terms every OpenAPI tool reads as the server means it:
    - the id rule's `\\p{..}` classes as explicit ranges (ECMA and Python regexes have none);
    - pydantic's `dict[Key, Value]` (`patternProperties` {key pattern: value}) as `propertyNames` +
      `additionalProperties`: under patternProperties a key that misses the pattern is simply
      unconstrained, while the server refuses it."""
    if isinstance(node, list):
        return [_portable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: explicit_pattern(v) if k == "pattern" and isinstance(v, str) else _portable(v) for k, v in node.items()}
    pattern_props = node.get("patternProperties")
    if isinstance(pattern_props, dict) and len(pattern_props) == 1 and "additionalProperties" not in node:
        [(key_pattern, value)] = node.pop("patternProperties").items()
        node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": explicit_pattern(key_pattern)}
        node["additionalProperties"] = value
    return node


def _openapi() -> dict:
    """FastAPI's document with the limits this replica enforces, so that everything the schema
    allows is accepted: k up to max_k, the list caps, the replay header's accepted values (this
    replica's variants; the header is left out when replay_header is off), in terms every OpenAPI
    tool reads (`_portable`)."""
    if api.openapi_schema is None:
        api.openapi_schema = _portable(get_openapi(title=api.title, version=api.version,
                                                            description=api.description, routes=api.routes))
    spec = copy.deepcopy(api.openapi_schema)
    lim = dict(_schema_limits)
    if lim:
        schemas = spec["components"]["schemas"]
        schemas["RecommendRequest"]["properties"]["k"]["maximum"] = lim["max_k"]
        schemas["RecommendRequest"]["properties"]["exclude"]["maxItems"] = lim["max_exclude"]
        schemas["ScoreRequest"]["properties"]["item_ids"]["maxItems"] = lim["max_score_items"]
        op = spec["paths"]["/v1/recommend"]["post"]
        params = [p for p in op.get("parameters", []) if p["name"] != "x-recstream-replay"]
        replay = next((p for p in op.get("parameters", []) if p["name"] == "x-recstream-replay"), None)
        if replay is not None and lim["replay_header"] and lim["variants"]:
            params.append({**replay, "schema": {"type": "string", "enum": lim["variants"],
                                                "title": "X-Recstream-Replay"}})
        op["parameters"] = params
    return spec


api.openapi = _openapi


class _StageDeployment:
    """A model stage as its own deployment (split layout; the ranker in both layouts)."""

    stage_name = ""

    def __init__(self, config: dict):
        self.config = ServeConfig(**config)
        torch.set_num_threads(self.config.torch_threads)
        self.device = pick_device(self.config.device) if self.stage_name == "ranker" else "cpu"
        self.stage = make_stage(self.stage_name, self.config, self.device)

    async def reconfigure(self, user_config: dict) -> None:
        await asyncio.to_thread(load_stage, self.stage, parse_variants(user_config, self.config))

    def _safe(self, req: StageRequest) -> StageResult:
        try:
            return self.stage(req)
        except Exception as e:  # answered as a failed stage, so the ingress falls back
            log.warning("%s failed: %s: %s", self.stage_name, type(e).__name__, e)
            return StageResult(items=[], error=type(e).__name__)


@serve.deployment(name="retrieval")
class RetrievalDeployment(_StageDeployment):
    stage_name = "retrieval"

    async def __call__(self, req: StageRequest) -> StageResult:
        return await asyncio.to_thread(self._safe, req)


@serve.deployment(name="coarse")
class CoarseDeployment(_StageDeployment):
    stage_name = "coarse"

    async def __call__(self, req: StageRequest) -> StageResult:
        return await asyncio.to_thread(self._safe, req)


@serve.deployment(name="ranker")
class RankerDeployment(_StageDeployment):
    """Fine ranker with dynamic batching; on a GPU node give it num_gpus and device=cuda|auto."""

    stage_name = "ranker"

    def __init__(self, config: dict):
        super().__init__(config)
        self.__call__.set_max_batch_size(self.config.ranker_max_batch_size)
        self.__call__.set_batch_wait_timeout_s(self.config.ranker_batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def __call__(self, reqs: list[StageRequest]) -> list[StageResult]:
        return await self.score_batch(reqs)

    async def score_batch(self, reqs: list[StageRequest]) -> list[StageResult]:
        """One batch the handler collected: one forward pass per model version in it; a failing
        request answers with its own error. Apart from the decorator, so a test can drive it
        through a batch queue of its own: the class's queue, once started in a process, holds an
        event loop's weakref and the class no longer pickles for a deployment."""
        m.RANKER_BATCH.observe(len(reqs))
        return await asyncio.to_thread(self.stage.batch, reqs)

    def metrics(self) -> bytes:
        return generate_latest()


@serve.deployment(name="ingress", max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict, config: dict, retrieval: Any = None, coarse: Any = None, ranker: Any = None):
        self.settings = Settings(**settings)
        self.config = c = ServeConfig(**config)
        set_max_body_bytes(c.max_body_bytes)  # this replica's copy of the app enforces this deployment's limits
        set_body_read_timeout_ms(c.body_read_timeout_ms)
        torch.set_num_threads(c.torch_threads)
        t = c.deadlines.redis_timeout_ms / 1000
        r = redis_client(self.settings.redis_url, socket_timeout=t, socket_connect_timeout=t)
        layout = KeyLayout.from_settings(self.settings)
        self.inputs = RedisInputs(r, self.settings.redis_prefix, feast_repo=self._feast(), item_cache_ttl_s=c.item_feature_cache_ttl_s,
                                  layout=layout)
        popular = PopularItems(r, prefix=self.settings.redis_prefix, pool_size=c.popular_pool_size,
                                       refresh_s=c.popular_refresh_s, layout=layout)
        self.impressions = ImpressionLogger(self.settings.kafka_bootstrap, self.settings.impressions_topic,
                                            buffer_max=c.impression_buffer_max)
        # stages not given as handles run in this replica
        self.local = [s for s, h in (("retrieval", retrieval), ("coarse", coarse), ("ranker", ranker)) if h is None]
        self.stages = {s: make_stage(s, c, pick_device(c.device) if s == "ranker" else "cpu") for s in self.local}
        # a ranker in this replica batches the replica's concurrent requests, as the ranker deployment does
        local_ranker = ranker or LocalBatcher(self.stages["ranker"], c.ranker_max_batch_size, c.ranker_batch_wait_timeout_s)
        self.recommender = Recommender(c, self.inputs, popular, retrieval or self.stages["retrieval"],
                                       coarse or self.stages["coarse"], local_ranker, {}, self.impressions)
        self._loaded = False

    def _feast(self):
        if self.config.user_feature_source != "feast":
            return None
        try:
            from features.feast_repo import repo_for_settings

            return repo_for_settings(self.settings)
        except Exception as e:  # Feast unreachable at start: serve with default user features
            log.warning("Feast repository unavailable (%s); user features fall back to defaults", e)
            return None

    async def reconfigure(self, user_config: dict) -> None:
        variants = parse_variants(user_config, self.config)

        def load() -> dict[str, VariantRuntime]:
            for s in self.local:
                load_stage(self.stages[s], variants)
            return variant_runtimes(variants, self.config)

        runtimes = await asyncio.to_thread(load)
        self.recommender.vectors = vectors_for(runtimes)
        self.recommender.set_variants(runtimes)
        set_schema_limits(max_k=self.config.max_k, max_exclude=self.config.max_exclude,
                          max_score_items=self.config.max_score_items, replay_header=self.config.replay_header,
                          variants=sorted(runtimes))
        await self.recommender.warm_up()
        self._loaded = True
        log.info("serving variants %s", self.recommender.model_versions)

    @api.post("/v1/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES)
    async def recommend(self, req: RecommendRequest,
                        x_recstream_replay: str | None = Header(None, description="replay tool only: serve this variant "
                                                                "(one of the variants the schema lists) and do not log "
                                                                "the impression")) -> RecommendResponse:
        c = self.config
        if req.k > c.max_k:
            raise HTTPException(422, detail=[{"loc": ["body", "k"], "msg": f"k ({req.k}) must be <= max_k ({c.max_k})",
                                              "type": "less_than_equal"}])
        if len(req.exclude) > c.max_exclude:
            raise HTTPException(422, detail=[{"loc": ["body", "exclude"], "type": "too_long",
                                              "msg": f"exclude has {len(req.exclude)} items, max_exclude is {c.max_exclude}"}])
        if x_recstream_replay is not None:
            if not c.replay_header or x_recstream_replay not in self.recommender.variants:
                raise HTTPException(422, detail=[{"loc": ["header", "x-recstream-replay"], "type": "invalid",
                                                  "msg": f"replay requests are off or the variant is unknown; variants: "
                                                         f"{sorted(self.recommender.variants)[:16]}"}])
            return await self.recommender.recommend(req, variant=x_recstream_replay, log_impression=False)
        return await self.recommender.recommend(req)

    @api.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    async def score(self, req: ScoreRequest) -> ScoreResponse:
        if len(req.item_ids) > self.config.max_score_items:
            raise HTTPException(422, detail=[{"loc": ["body", "item_ids"], "type": "too_long",
                                              "msg": f"item_ids has {len(req.item_ids)} items, max_score_items is "
                                                     f"{self.config.max_score_items}"}])
        return await self.recommender.score(req)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", responses=NOT_READY_RESPONSE)
    def readyz(self) -> dict:
        if not self._loaded:
            raise HTTPException(503, detail=[{"loc": [], "type": "not_ready", "msg": "models not loaded yet"}])
        return {"status": "ready", "variants": self.recommender.model_versions}

    @api.get("/metrics", include_in_schema=False)
    def metrics(self) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def __del__(self):
        try:
            self.impressions.close()
        except Exception:
            pass


def build_app(settings: Settings, config: ServeConfig):
    """The application graph; the variants travel as every deployment's user_config only."""
    s, c = settings.model_dump(mode="json"), config.model_dump(mode="json", exclude={"variants"})
    user_config = {"variants": config.model_dump(mode="json")["variants"]}
    # numpy's BLAS reads its thread count once, at import: set it before the replica starts. Small
    # per-request matmuls stall on BLAS worker threads when replicas share cores (measured: a
    # top-1000 over 20k items took 12.7 ms with the default threads under load, 0.4 ms with one).
    threads = str(config.torch_threads)
    env = {k: threads for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cpu = {"num_cpus": config.num_cpus, "runtime_env": {"env_vars": env}}
    stage_cpu = {**cpu, **({"resources": dict(config.stage_resources)} if config.stage_resources else {})}
    stage_opts = dict(ray_actor_options=stage_cpu, user_config=user_config)
    ranker = None
    if config.ranker_deployment:
        ranker_opts = {**cpu, "num_gpus": config.num_gpus,
                       **({"resources": dict(config.ranker_resources)} if config.ranker_resources else {})}
        ranker = RankerDeployment.options(num_replicas=config.ranker_num_replicas, user_config=user_config,
                                          ray_actor_options=ranker_opts).bind(c)
    retrieval = coarse = None
    if config.layout == "split":
        retrieval = RetrievalDeployment.options(**stage_opts).bind(c)
        coarse = CoarseDeployment.options(**stage_opts).bind(c)
    return Ingress.options(num_replicas=config.num_replicas, ray_actor_options=stage_cpu,
                           user_config=user_config).bind(s, c, retrieval, coarse, ranker)


def app_builder(args: dict[str, Any]):
    """The import path of a Serve config file (`serve deploy deploy/serve/recstream.yaml`, `recstream
    serve`): args are the ServeConfig fields without variants, which come from each deployment's
    user_config in the file; Settings come from RECSTREAM_* variables (the app's runtime_env)."""
    return build_app(Settings(), ServeConfig(**args))
