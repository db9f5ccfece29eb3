"""bse-encoder: keeps each user's behaviour sequence and SDIM bucket tables in Redis.

The BSE store applies a batch and stores the consumer's offsets in one atomic step (see
features/bse/store.py), so this handler only translates events into behaviours. Only positive
engagement enters the sequence; impressions still advance the stored offsets.
"""

from __future__ import annotations

import time

from features.bse import Behaviour, BseStore
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
