"""The BSE lookup as a plain class (fused layout) or its own Ray Serve deployment (split layout).

    from services.bse_lookup import BseLookup, bse_lookup_deployment
    lookup = BseLookup(redis_url, prefix="rs", hasher_configs={"base": SdimConfig()})   # in-process
    app = bse_lookup_deployment.options(num_replicas=2).bind(redis_url, "rs", {"base": {...}})
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
from ray import serve

from features.bse.redis_store import RedisBseStore
from features.bse.versions import DEFAULT_ITEM_BITS, TableVersion
from features.keys import KeyLayout
from models.sdim_hash import SdimConfig
from recstream.redis_io import is_cluster_url

log = logging.getLogger(__name__)


class BseLookup:
    """Read-only SDIM lookup client: needs only the hashers, never the embedding tables.

    Args:
        redis_url: Redis holding the BSE tables.
        prefix: key prefix (Settings.redis_prefix).
        hasher_configs: ranker model_version -> SdimConfig (or its dict) of the versions served.
        item_bits: quantisation width the writers use (part of the table version name).
        partitions: the partitioned key layout's partition count (Settings.redis_partitions), so
            a user's tables are found under the partition the producers send the user to; None:
            the single layout.
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        hasher_configs: Mapping[str, SdimConfig | Mapping],
        item_bits: int = DEFAULT_ITEM_BITS,
        partitions: int | None = None,
    ):
        if partitions is None and is_cluster_url(redis_url):
            # the processors always write a cluster in the partitioned layout (recstream/settings.py):
            # single-layout keys would read as unknown users, zero interest and no error
            raise ValueError(f"BseLookup on the Redis Cluster {redis_url!r} needs partitions "
                             "(Settings.redis_partitions: the events topic's partition count)")
        self.store = RedisBseStore.from_url(redis_url, prefix=prefix, layout=KeyLayout(prefix, partitions))
        self.versions: dict[str, TableVersion] = {}
        for model_version, cfg in hasher_configs.items():
            cfg = cfg if isinstance(cfg, SdimConfig) else SdimConfig(**cfg)
            self.versions[model_version] = self.store.register_lookup_version(model_version, cfg, item_bits)

    def lookup(self, user_id: str, model_version: str, cand_embeddings: np.ndarray) -> np.ndarray:
        """Args: cand_embeddings (N, d) float32. Returns: (N, d) float32 SDIM interest (zeros for unknown users)."""
        return self.store.lookup(user_id, self.versions[model_version], np.asarray(cand_embeddings, np.float32))

    def tables(self, user_ids: list[str], model_version: str) -> np.ndarray:
        """Returns: (U, S, B, d) float32 raw bucket sums, for gathering on the ranker's device."""
        return self.store.tables(user_ids, self.versions[model_version])

    def __call__(self, user_id: str, model_version: str, cand_embeddings: np.ndarray) -> np.ndarray:
        return self.lookup(user_id, model_version, cand_embeddings)


# Sync methods: Ray Serve runs them on the replica's thread pool, and redis-py is blocking.
bse_lookup_deployment = serve.deployment(name="bse_lookup", num_replicas=1, ray_actor_options={"num_cpus": 0.25})(
    BseLookup
)
