"""Pure torch modules and their configs: no I/O.

`MODELS` names every trainable model with its config class and task; training, artefacts and
serving build models through `build_model(name, config_dict)` so a manifest alone rebuilds one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from models.bpr import BprConfig, BprMF
from models.hcn import HCN, HcnConfig
from models.itemknn import ItemKNN, ItemKnnConfig
from models.pop_count import PopCount, PopCountConfig
from models.popularity import Popularity, PopularityConfig
from models.ranker import CtrRanker, RankerConfig
from models.sdim_hash import SdimConfig, SdimHasher
from models.two_tower import TwoTower, TwoTowerConfig


@dataclass(frozen=True)
class ModelSpec:
    model_cls: type[nn.Module]
    config_cls: type
    task: Literal["retrieval", "ranking"]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


# Baselines are named configurations of the same classes, so they differ only where they should.
MODELS: dict[str, ModelSpec] = {
    "two_tower": ModelSpec(TwoTower, TwoTowerConfig, "retrieval"),
    "hcn": ModelSpec(HCN, HcnConfig, "retrieval"),
    "popularity": ModelSpec(Popularity, PopularityConfig, "retrieval"),
    "pop_count": ModelSpec(PopCount, PopCountConfig, "retrieval"),
    "itemknn": ModelSpec(ItemKNN, ItemKnnConfig, "retrieval"),
    "bpr": ModelSpec(BprMF, BprConfig, "retrieval"),
    "ranker": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "sdim"}),
    "collision_attention": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "collision"}),
    "full_attention": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "attention"}),
    "din_last50": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "none", "short_len": 50}),
}


def config_from_dict(config_cls: type, d: dict[str, Any]):
    """Rebuild a frozen config from JSON (lists -> tuples, nested SdimConfig)."""
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name == "sdim" and isinstance(v, dict):
            v = SdimConfig(**v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise ValueError(f"{config_cls.__name__}: unknown config keys {sorted(unknown)}")
    return config_cls(**kwargs)


def build_model(name: str, config: dict[str, Any] | Any) -> nn.Module:
    """Build model `name` from a config object or dict (the model's defaults fill the gaps)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    spec = MODELS[name]
    if not isinstance(config, spec.config_cls):
        config = config_from_dict(spec.config_cls, {**spec.defaults, **dict(config)})
    return spec.model_cls(config)


__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "config_from_dict",
    "CtrRanker",
    "RankerConfig",
    "HCN",
    "HcnConfig",
    "TwoTower",
    "TwoTowerConfig",
    "Popularity",
    "PopularityConfig",
    "PopCount",
    "PopCountConfig",
    "ItemKNN",
    "ItemKnnConfig",
    "BprMF",
    "BprConfig",
    "SdimConfig",
    "SdimHasher",
]
