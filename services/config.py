"""Serving config: strict, typed, validated at load time with the values in the message."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StageDeadlines(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates_timeout_ms: float = Field(50.0, gt=0, le=10_000, description="candidate generation deadline")
    redis_timeout_ms: float = Field(20.0, gt=0, le=10_000, description="socket timeout of online-store reads")


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="HTTP bind address of the Ray Serve proxy")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy")
    layout: Literal["fused", "split"] = Field("fused", description="fused: all stages in the ingress replica; split: one deployment per stage")
    num_replicas: int = Field(1, ge=1, le=256, description="ingress replicas")
    num_cpus: float = Field(0.25, gt=0, le=64, description="CPUs reserved per replica (fractional so stages fit on small hosts)")
    num_gpus: float = Field(0.0, ge=0, le=8, description="GPUs per ranking replica (0 on CPU hosts)")
    max_k: int = Field(200, ge=1, le=10_000, description="largest k a request may ask for")
    max_exclude: int = Field(1000, ge=0, le=100_000, description="largest exclude list a request may carry")
    popular_pool_size: int = Field(1000, ge=1, le=100_000, description="popular items cached per replica for candidates")
    popular_refresh_s: float = Field(2.0, gt=0, le=3600, description="how often the replica refreshes its popular-items cache")
    experiment_salt: str = Field("exp-0", min_length=1, description="salt of the stable user -> variant hash")
    variants: dict[str, float] = Field(default_factory=lambda: {"A": 1.0}, description="variant -> traffic share")
    model_versions: dict[str, str] = Field(default_factory=lambda: {"candidates": "popularity-v1"},
                                           description="stage -> model version served")
    impression_buffer_max: int = Field(10_000, ge=1, le=10_000_000, description="impression records buffered before dropping")
    deadlines: StageDeadlines = Field(default_factory=StageDeadlines)

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if not self.variants:
            raise ValueError("variants must name at least one variant")
        total = sum(self.variants.values())
        if any(w < 0 for w in self.variants.values()) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"variants shares must be >= 0 and sum to 1, got {self.variants} (sum {total})")
        if self.popular_pool_size < self.max_k:
            raise ValueError(f"popular_pool_size ({self.popular_pool_size}) must be >= max_k ({self.max_k})")
        return self
