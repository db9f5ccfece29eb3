"""Pure torch modules and their configs: no I/O.

`MODELS` names every trainable model with its config class and task, and says what the model
needs from the training job: whether it takes dense features, how its config is built from the
data (`data_config`), and any special start-up (`start`). Training, artefacts and serving build
models through `build_model(name, config_dict)` so a manifest alone rebuilds one. Adding a model
touches its own file and one line here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

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
class DataShape:
    """What the training data tells a model's config.

    Args:
        dims: vocabulary sizes: n_users, n_items, n_item_cats.
        long_len: behaviours per ranking sample (the synthetic sequence length, or the ML-100k window).
        hist_len: the ML-100k history window (ItemKNN's input length on any data).
    """

    dims: dict[str, int]
    long_len: int
    hist_len: int


def _vocab_dims(d: DataShape) -> dict[str, Any]:
    return dict(d.dims)


def _item_count(d: DataShape) -> dict[str, Any]:
    return {"n_items": d.dims["n_items"]}


def _itemknn(d: DataShape) -> dict[str, Any]:
    return {"n_items": d.dims["n_items"], "hist_len": d.hist_len}


def _ranker(d: DataShape) -> dict[str, Any]:
    return {**d.dims, "long_len": d.long_len}


def _hcn(d: DataShape) -> dict[str, Any]:
    # 50 long / 10 short behaviours: ML-100k histories are short (median user ~65 ratings over all time)
    # and the clustering cost grows with long_len; keeps ML-100k training within minutes on 2 cores.
    return {**d.dims, "long_len": 50, "short_len": 10, "n_iters": 2}


@dataclass(frozen=True)
class ModelSpec:
    """One model's registry entry.

    Args:
        defaults: config values under the data's (a baseline is a named configuration of a class).
        takes_features: accepts the dense user/item stream features (`recstream train --features feast`).
        data_config: the config entries that come from the data (merged over `defaults`).
        start: special start-up after construction, from the training items' counts (n_items,).
    """

    model_cls: type[nn.Module]
    config_cls: type
    task: Literal["retrieval", "ranking"]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    takes_features: bool = False
    data_config: Callable[[DataShape], dict[str, Any]] = _vocab_dims
    start: Callable[[nn.Module, np.ndarray], None] | None = None


# Baselines are named configurations of the same classes, so they differ only where they should.
MODELS: dict[str, ModelSpec] = {
    "two_tower": ModelSpec(TwoTower, TwoTowerConfig, "retrieval"),
    "hcn": ModelSpec(HCN, HcnConfig, "retrieval", takes_features=True, data_config=_hcn),
    "popularity": ModelSpec(Popularity, PopularityConfig, "retrieval", data_config=_item_count,
                            start=Popularity.start_from_counts),
    "pop_count": ModelSpec(PopCount, PopCountConfig, "retrieval", data_config=_item_count),
    "itemknn": ModelSpec(ItemKNN, ItemKnnConfig, "retrieval", data_config=_itemknn),
    "bpr": ModelSpec(BprMF, BprConfig, "retrieval"),
    "ranker": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "sdim"}, True, _ranker),
    "collision_attention": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "collision"}, True, _ranker),
    "full_attention": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "attention"}, True, _ranker),
    "din_last50": ModelSpec(CtrRanker, RankerConfig, "ranking", {"long_term": "none", "short_len": 50}, True, _ranker),
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
    "DataShape",
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
