"""Serving config: strict, typed, validated at load time with the values in the message.

A variant names a model version for every stage; `latest` resolves to the newest artefact when
a replica loads the variant (the answer's `model_versions` always carries the resolved version).
The variants and their versions travel only in each deployment's `user_config`, never in the
application's `args`: Ray Serve hashes `args` into the code version, so a version there would make
every model update a restart of every replica, while a `user_config` change calls `reconfigure` on
the live replicas (services/app.py). In a Ray Serve config file the variants therefore sit under
`deployments[].user_config`; services/serve_file.py reads them from there.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from scoring.config import ExplorationConfig, ModelRef
from scoring.fusion import FusionConfig


class StageDeadlines(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs_timeout_ms: float = Field(30.0, gt=0, le=10_000, description="request-time inputs (history, user features, "
                                     "BSE tables), fetched concurrently, each under this deadline")
    candidates_timeout_ms: float = Field(50.0, gt=0, le=10_000, description="candidate generation deadline")
    coarse_timeout_ms: float = Field(50.0, gt=0, le=10_000, description="coarse ranking (HCN) deadline")
    ranker_timeout_ms: float = Field(100.0, gt=0, le=10_000, description="fine ranking deadline (includes batching wait)")
    redis_timeout_ms: float = Field(20.0, gt=0, le=10_000, description="socket timeout of online-store reads")


class CircuitBreakerConfig(BaseModel):
    """Per stage and replica set: after `failures_to_open` consecutive failures (an error or a
    missed deadline) the stage is skipped (its fallback taken at once) for `open_ms`; then one
    request probes it, and its success closes the breaker. A dead replica is then noticed once,
    not by every request waiting out its deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures_to_open: int = Field(3, ge=1, le=1000, description="consecutive failures of a stage that open its breaker")
    open_ms: float = Field(1000.0, gt=0, le=600_000, description="how long an open stage is skipped before a probe")


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(ge=0, le=1, description="traffic share")
    retrieval: ModelRef = Field(default_factory=lambda: ModelRef(name="two_tower"), description="two-tower artefact")
    coarse: ModelRef = Field(default_factory=lambda: ModelRef(name="hcn"), description="HCN artefact")
    ranker: ModelRef = Field(default_factory=lambda: ModelRef(name="ranker"), description="SDIM+DIN ranker artefact")
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    cascade: Literal["retrieval", "coarse", "ranker"] = Field(
        "ranker", description="the last stage that orders the answer: retrieval (two-tower only), coarse (two-tower "
                              "-> HCN) or ranker (the full cascade); the stages after it do not run")
    fusion: FusionConfig | None = Field(None, description="weights of the stages' z-scored scores in the final order "
                                        "(ranker cascade only); None: the ranker artefact's own, chosen on validation "
                                        "when it was trained, else the ranker's order alone")


_RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def _default_variants() -> dict[str, VariantConfig]:
    return {"A": VariantConfig(share=1.0)}


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="HTTP bind address of the Ray Serve proxy")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy")
    layout: Literal["fused", "split"] = Field("fused", description="fused: inputs, retrieval and coarse ranking in the "
                                               "ingress replica; split: retrieval and coarse as their own deployments")
    ranker_deployment: bool = Field(True, description="fine ranker as its own batched deployment (GPU nodes); false: "
                                    "in the ingress replica (lowest latency on one small host)")
    num_replicas: int = Field(1, ge=1, le=256, description="ingress replicas")
    num_cpus: float = Field(0.25, gt=0, le=64, description="CPUs reserved per replica (fractional so stages fit on small hosts)")
    ranker_num_replicas: int = Field(1, ge=1, le=256, description="ranker replicas")
    num_gpus: float = Field(0.0, ge=0, le=8, description="GPUs per ranker replica (0 on CPU hosts)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device of the ranker: auto = cuda when "
                                                   "the replica sees a GPU, else cpu")
    ranker_max_batch_size: int = Field(8, ge=1, le=1024, description="requests the ranker scores together (its deployment's @serve.batch, "
                                       "or the ingress's own batcher when ranker_deployment is false)")
    ranker_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each ranker replica requires (its deployment's "
        "ray_actor_options.resources), e.g. {\"ranker_node\": 1} to pin the ranker to the nodes started with that "
        "resource (`ray start --resources`); empty: any node with the CPUs/GPUs")
    stage_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each replica of the ingress and, in the split layout, "
        "of retrieval and coarse requires: keeps them off the ranker's nodes, so losing one costs only the ranker")
    ranker_batch_wait_timeout_s: float = Field(0.002, ge=0, le=1, description="how long a ranker batch waits to fill")
    torch_threads: int = Field(1, ge=1, le=64, description="torch and BLAS threads per replica (1: replicas share cores)")

    max_k: int = Field(200, ge=1, le=10_000, description="largest k a request may ask for")
    max_exclude: int = Field(1000, ge=0, le=100_000, description="largest exclude list a request may carry")
    max_score_items: int = Field(1000, ge=1, le=100_000, description="largest item_ids list of /v1/score")
    max_body_bytes: int = Field(1_000_000, ge=1_000, le=100_000_000, description="largest HTTP request body in bytes; "
                                "a larger one is answered 413 before it is parsed")
    body_read_timeout_ms: float = Field(5000.0, gt=0, le=600_000, description="a request body that has not fully "
                                        "arrived this long after the request started gets 408 and its connection is "
                                        "closed: a stalled upload holds one ingress slot at most this long")
    candidate_top_k: int = Field(1000, ge=1, le=100_000, description="N: items out of candidate generation")
    coarse_top_k: int = Field(200, ge=1, le=100_000, description="M: items out of coarse ranking")
    popular_merge_k: int = Field(50, ge=0, le=100_000, description="popular items merged into the candidates (covers "
                                 "new items the two-tower has never seen)")
    history_len: int = Field(200, ge=1, le=10_000, description="recent behaviours read per request")
    coarse_backend: Literal["eager", "torchscript"] = Field(
        "torchscript", description="HCN's per-request user tower: torchscript = a frozen trace, checked against eager "
        "torch at load (1e-5) and served eagerly where it differs or cannot be traced (scoring/backends.py)")
    retrieval_index: Literal["exact", "hnsw"] = Field("exact", description="exact: top-N inner product over all item "
                                                      "vectors; hnsw: faiss HNSW index (large catalogues)")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree")
    hnsw_ef_search: int = Field(1200, ge=16, le=100_000, description="HNSW search breadth (>= candidate_top_k)")
    artifacts_dir: str | None = Field(None, description="artefact root; None: $RECSTREAM_ARTIFACTS_DIR or <repo>/artifacts")

    popular_pool_size: int = Field(1000, ge=1, le=100_000, description="popular items cached per replica for candidates")
    popular_refresh_s: float = Field(2.0, gt=0, le=3600, description="how often the replica refreshes its popular-items cache")
    item_feature_cache_ttl_s: float = Field(1.0, ge=0, le=3600, description="in-replica cache of item feature blobs")
    user_feature_source: Literal["feast", "none"] = Field("feast", description="feast: Feast online store; none: defaults")
    experiment_salt: str = Field("exp-0", min_length=1, description="salt of the stable user -> variant hash")
    replay_header: bool = Field(True, description="honour the X-Recstream-Replay: <variant> header (the replay tool "
                                "re-sending logged requests to a chosen variant); such requests are not impression-logged")
    variants: dict[str, VariantConfig] = Field(default_factory=_default_variants, description="variant -> config")
    impression_buffer_max: int = Field(10_000, ge=1, le=10_000_000, description="impression records buffered before dropping")
    deadlines: StageDeadlines = Field(default_factory=StageDeadlines)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)

    @field_validator("ranker_resources", "stage_resources")
    @classmethod
    def _custom_resources(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for name, amount in v.items():
            if not name.strip():
                raise ValueError(f"{info.field_name}: resource names must be non-empty, got {v}")
            # Ray refuses these in `resources` when the replica is created, long after load
            if name in _RAY_BUILTIN_RESOURCES:
                raise ValueError(f"{info.field_name}: {name!r} is a Ray built-in resource (set num_cpus/num_gpus "
                                 f"instead), got {v}")
            if not (amount > 0 and math.isfinite(amount)):
                raise ValueError(f"{info.field_name}: amount of {name!r} must be a positive number, got {amount}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if not self.variants:
            raise ValueError("variants must name at least one variant")
        shares = {k: v.share for k, v in self.variants.items()}
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise ValueError(f"variants shares must sum to 1, got {shares} (sum {sum(shares.values())})")
        if self.popular_pool_size < self.max_k:
            raise ValueError(f"popular_pool_size ({self.popular_pool_size}) must be >= max_k ({self.max_k})")
        if self.coarse_top_k > self.candidate_top_k:
            raise ValueError(f"coarse_top_k ({self.coarse_top_k}) must be <= candidate_top_k ({self.candidate_top_k})")
        if self.max_k > self.coarse_top_k:
            raise ValueError(f"max_k ({self.max_k}) must be <= coarse_top_k ({self.coarse_top_k})")
        if self.ranker_resources and not self.ranker_deployment:
            raise ValueError(f"ranker_resources ({self.ranker_resources}) needs ranker_deployment true: the ranker in "
                             "the ingress takes the ingress's placement (stage_resources)")
        if self.retrieval_index == "hnsw" and self.hnsw_ef_search < self.candidate_top_k:
            raise ValueError(f"hnsw_ef_search ({self.hnsw_ef_search}) must be >= candidate_top_k ({self.candidate_top_k})")
        return self

    @property
    def variant_shares(self) -> dict[str, float]:
        return {k: v.share for k, v in self.variants.items()}

    @property
    def deployment_names(self) -> tuple[str, ...]:
        """The Ray Serve deployments this layout runs (services/app.py build_app)."""
        return ("ingress",) + (("retrieval", "coarse") if self.layout == "split" else ()) + \
            (("ranker",) if self.ranker_deployment else ())
