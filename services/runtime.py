"""Building a replica's serving state from config: stages, loaded versions, variant runtimes.

Shared by the Ray Serve deployments (services/app.py) and in-process users (`local_recommender`:
offline evaluation through the very same request path, unit tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

from models.sdim_hash import SdimConfig
from scoring.config import ModelRef
from scoring.fusion import FusionConfig, manifest_fusion
from services.config import ServeConfig, VariantConfig
from services.inputs import InputSources
from services.pipeline import Recommender, VariantRuntime
from scoring.servables import CoarseServable, ModelCache, RankerServable, RetrievalServable, read_manifest, resolve
from services.stages import CoarseStage, RankerStage, RetrievalStage

STAGES = ("retrieval", "coarse", "ranker")


def parse_variants(user_config: dict | None, config: ServeConfig) -> dict[str, VariantConfig]:
    """The variants of a user_config (validated like ServeConfig), every 'latest' resolved to a
    concrete version once, so all stages of this replica load and report the same versions."""
    variants = config.variants
    if user_config and "variants" in user_config:
        variants = ServeConfig(**{**config.model_dump(), "variants": user_config["variants"]}).variants
    out = {}
    for name, v in variants.items():
        pinned = {s: ModelRef(name=getattr(v, s).name, version=resolve(getattr(v, s), config.artifacts_dir)) for s in STAGES}
        out[name] = v.model_copy(update=pinned)
    return out


def make_stage(name: str, config: ServeConfig, device: str = "cpu"):
    root = config.artifacts_dir
    if name == "retrieval":
        return RetrievalStage(ModelCache(RetrievalServable, root, index=config.retrieval_index, hnsw_m=config.hnsw_m,
                                         hnsw_ef_search=config.hnsw_ef_search))
    if name == "coarse":
        return CoarseStage(ModelCache(CoarseServable, root, backend=config.coarse_backend))
    if name == "ranker":
        return RankerStage(ModelCache(RankerServable, root, device=device))
    raise ValueError(f"unknown stage {name!r}; stages: {STAGES}")


def load_stage(stage, variants: dict[str, VariantConfig]) -> None:
    """Load the versions this stage's variants name, then free the ones none names any more."""
    stage.versions.load([getattr(v, stage.name) for v in variants.values()])
    stage.versions.factory.keep_only({(mdl.name, mdl.version) for mdl in stage.versions.models.values()})


def _sdim(ranker_config: dict) -> SdimConfig | None:
    if ranker_config.get("long_term", "sdim") != "sdim":
        return None
    return SdimConfig(**ranker_config.get("sdim", {}))


def variant_runtimes(variants: dict[str, VariantConfig], config: ServeConfig) -> dict[str, VariantRuntime]:
    """What each variant's models take as inputs, read from their manifests."""
    out = {}
    for name, v in variants.items():
        manifests = {s: read_manifest(getattr(v, s), config.artifacts_dir) for s in STAGES}

        def uses(key: str) -> bool:
            return any(manifests[s]["config"].get(key, 0) > 0 for s in ("coarse", "ranker"))

        out[name] = VariantRuntime(name=name, config=v, versions={s: mf["version"] for s, mf in manifests.items()},
                                   fusion=variant_fusion(v, manifests["ranker"]),
                                   sdim=_sdim(manifests["ranker"]["config"]), user_features=uses("n_user_feats"),
                                   item_features=uses("n_item_feats"),
                                   model_names={s: mf["name"] for s, mf in manifests.items()})
    return out


def variant_fusion(v: VariantConfig, ranker_manifest: dict) -> FusionConfig:
    """The variant's own fusion, else the one chosen on validation when its ranker was trained
    (manifest extra.fusion), else the ranker's order alone."""
    return v.fusion if v.fusion is not None else manifest_fusion(ranker_manifest)


def vectors_for(runtimes: dict[str, VariantRuntime]) -> Any:
    """The feature-vector module when some variant's models take features, else None."""
    if not any(r.user_features or r.item_features for r in runtimes.values()):
        return None
    import features.vectors

    return features.vectors


def local_recommender(config: ServeConfig, inputs: InputSources, popular: Any = None, impressions: Any = None,
                      seed: int | None = None, device: str = "cpu") -> Recommender:
    """Every stage in this process, variants loaded: the request path without Ray."""
    variants = parse_variants(None, config)
    stages = {s: make_stage(s, config, device if s == "ranker" else "cpu") for s in STAGES}
    for stage in stages.values():
        load_stage(stage, variants)
    runtimes = variant_runtimes(variants, config)
    return Recommender(config, inputs, popular, stages["retrieval"], stages["coarse"], stages["ranker"], runtimes,
                       impressions, vectors=vectors_for(runtimes), seed=seed)
