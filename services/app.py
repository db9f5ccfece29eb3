"""The Ray Serve application: a FastAPI ingress composing the serving stages.

fused layout (default on small hosts): every stage runs in the ingress replica.
split layout: each stage is its own deployment, passed to the ingress as a handle.
"""


import logging
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from recstream.settings import Settings
from services.api import RecommendRequest, RecommendResponse
from services.config import ServeConfig
from services.impression_log import ImpressionLogger
from services.pipeline import Recommender
from services.stages import PopularityCandidates

log = logging.getLogger(__name__)

api = FastAPI(title="recstream", version="0.1.0",
              description="Streaming recommender: candidates -> coarse rank -> fine rank, with impression logging.")


def _redis(settings: Settings, config: ServeConfig) -> redis.Redis:
    t = config.deadlines.redis_timeout_ms / 1000
    return redis.Redis.from_url(settings.redis_url, socket_timeout=t, socket_connect_timeout=t)


def _candidates(settings: Settings, config: ServeConfig) -> PopularityCandidates:
    return PopularityCandidates(_redis(settings, config), prefix=settings.redis_prefix,
                                pool_size=config.popular_pool_size, refresh_s=config.popular_refresh_s)


@serve.deployment(name="candidates")
class CandidatesDeployment:
    """Split layout only: candidate generation as its own deployment."""

    def __init__(self, settings: dict, config: dict):
        s, c = Settings(**settings), ServeConfig(**config)
        self.stage = _candidates(s, c)

    def __call__(self, user_id: str, k: int, exclude: list[str]):
        return self.stage(user_id, k, exclude)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict, config: dict, candidates: Any = None):
        self.settings = Settings(**settings)
        self.config = ServeConfig(**config)
        self.impressions = ImpressionLogger(self.settings.kafka_bootstrap, self.settings.impressions_topic,
                                            buffer_max=self.config.impression_buffer_max)
        self.recommender = Recommender(self.config, candidates or _candidates(self.settings, self.config), self.impressions)

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        if req.k > self.config.max_k:
            raise HTTPException(422, detail=[{"loc": ["body", "k"], "msg": f"k ({req.k}) must be <= max_k ({self.config.max_k})",
                                              "type": "less_than_equal"}])
        if len(req.exclude) > self.config.max_exclude:
            raise HTTPException(413, detail=[{"loc": ["body", "exclude"], "type": "too_long",
                                              "msg": f"exclude has {len(req.exclude)} items, max_exclude is {self.config.max_exclude}"}])
        return await self.recommender.recommend(req)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz(self) -> dict:
        return {"status": "ready", "model_versions": self.config.model_versions}

    @api.get("/metrics", include_in_schema=False)
    def metrics(self) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def __del__(self):
        try:
            self.impressions.close()
        except Exception:
            pass


def build_app(settings: Settings, config: ServeConfig):
    opts = dict(num_replicas=config.num_replicas, ray_actor_options={"num_cpus": config.num_cpus})
    s, c = settings.model_dump(mode="json"), config.model_dump(mode="json")
    if config.layout == "split":
        cand = CandidatesDeployment.options(ray_actor_options={"num_cpus": config.num_cpus}).bind(s, c)
        return Ingress.options(**opts).bind(s, c, cand)
    return Ingress.options(**opts).bind(s, c)
