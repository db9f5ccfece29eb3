"""bse-encoder: keeps each user's behaviour sequence and SDIM bucket tables in Redis.

The BSE store applies a batch and stores the consumer's offsets in one atomic step (see
features/bse/store.py), so this handler only translates events into behaviours. Only positive
engagement enters the sequence; impressions still advance the stored offsets.
"""

from __future__ import annotations

import time

from features.bse import Behaviour, BseStore, TableVersion
from features.bse.versions import DEFAULT_ITEM_BITS
from pipelines.stream import metrics as m
from pipelines.stream.base import SourcedEvent

BSE_UPDATE = m.Histogram("recstream_bse_update_seconds", "BSE table update latency per batch",
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class BseEncoderHandler:
    name = "bse-encoder"

    def __init__(self, store: BseStore, group: str = "bse-encoder"):
        self.store = store
        self.group = group

    def stored_offsets(self, topic: str) -> dict[int, int]:
        return {p: o for (t, p), o in self.store.committed_offsets(self.group).items() if t == topic}

    def apply(self, topic: str, events: list[SourcedEvent], next_offsets: dict[int, int]) -> int:
        behaviours = [Behaviour(se.event.user_id, se.event.item_id, topic, se.partition, se.offset)
                      for se in events if se.event.is_positive]
        t0 = time.perf_counter()
        res = self.store.apply_batch(behaviours, offsets={(topic, p): o for p, o in next_offsets.items()}, group=self.group)
        BSE_UPDATE.observe(time.perf_counter() - t0)
        m.DUPLICATES.labels(self.name).inc(res.n_skipped)
        return res.n_applied


def load_item_embeddings(spec: str):
    """Item embeddings named by a spec string.

    Args:
        spec: "random:<n_items>[:<seed>[:<dim>]]" (ids i0..i<n-1>, for demos, tests and benchmarks) or
            "artifact:<model_name>[/<version>]" (the deployed ranker's item table).
    Returns:
        an ItemEmbeddings.
    """
    from features.bse import ArrayItemEmbeddings

    kind, _, rest = spec.partition(":")
    if kind == "random":
        parts = rest.split(":")
        try:
            n_items = int(parts[0])
            seed = int(parts[1]) if len(parts) > 1 else 0
            dim = int(parts[2]) if len(parts) > 2 else 64
        except ValueError as e:
            raise ValueError(f"bad embeddings spec {spec!r}: expected random:<n_items>[:<seed>[:<dim>]]") from e
        return ArrayItemEmbeddings.random(n_items, dim=dim, seed=seed)
    if kind == "artifact":
        from features.bse.embeddings import VocabItemEmbeddings
        from pipelines.training.artifacts import load_item_embeddings as _from_artifact

        name, _, version = rest.partition("/")
        table, vocab, _hasher_version = _from_artifact(name, version or None)
        return VocabItemEmbeddings(table, vocab)
    raise ValueError(f"bad embeddings spec {spec!r}: use random:<n_items>[:<seed>] or artifact:<name>[/<version>]")


def load_table_version(spec: str, model_version: str, item_bits: int = DEFAULT_ITEM_BITS) -> TableVersion:
    """The BSE table version of ranker `model_version` for the embeddings `spec` (see
    load_item_embeddings), as the bse-encoder maintains it and `recstream bse rebuild` builds it.

    Serving looks a user's tables up under the name the ranker's own SdimConfig gives
    (services/runtime.py), so for an `artifact:` spec the hasher is the artefact's (its manifest's
    `config.sdim`): the default hasher of the embeddings' width would write tables under another
    name whenever the ranker was trained with other n_hashes, tau or seed, and serving would run
    without long-term interest. A `random:` spec has no ranker: the default hasher of its width.

    Raises:
        ValueError: the artefact's SDIM width differs from its item embeddings', or its hasher is
            not the one its manifest recorded at save time.
    """
    from models.sdim_hash import SdimConfig, SdimHasher

    emb = load_item_embeddings(spec)
    kind, _, rest = spec.partition(":")
    sdim = SdimConfig(dim=emb.dim)
    if kind == "artifact":
        import json

        from features.model_store import MANIFEST, artifact_path

        name, _, version = rest.partition("/")
        manifest = json.loads((artifact_path(name, version or None) / MANIFEST).read_text())
        if manifest.get("config", {}).get("sdim"):
            sdim = SdimConfig(**manifest["config"]["sdim"])
        if sdim.dim != emb.dim:
            raise ValueError(f"artefact {rest!r}: SDIM dim ({sdim.dim}) differs from its item embeddings' ({emb.dim})")
        recorded = manifest.get("sdim_hasher_version")
        if recorded is not None and SdimHasher(sdim).version != recorded:
            raise ValueError(f"artefact {rest!r}: hasher {SdimHasher(sdim).version} from its config, "
                             f"{recorded} recorded in its manifest")
    return TableVersion(SdimHasher(sdim), emb, model_version=model_version, item_bits=item_bits)
