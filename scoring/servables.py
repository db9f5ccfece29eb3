"""Model versions loaded for serving: the three stages' models with their vocabularies.

Each servable turns raw ids into the model's rows (unknown ids -> the model's hashed OOV rows:
the cold-start path) and computes one request's scores under `torch.inference_mode`. Work that
does not depend on the request is done once at load: the two-tower's item matrix (and its ANN
index), HCN's item vectors of every item row (when it takes no item features), the ranker's item
embeddings, DIN's item-side terms and the SDIM signatures of every item row
(scoring/ranker_batch.py); the ranker scores several requests in one forward pass.

Args common to the loaders:
    ref: which artefact (name, version or 'latest').
    root: artefact root (ServeConfig.artifacts_dir).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from features.model_store import artifact_path, load_artifact, load_vocabs
from models.layers import Vocab
from models.sdim import sdim_interest_from_tables
from models.sdim_hash import SdimHasher
from scoring.backends import Backend, hcn_user_tower
from scoring.config import ModelRef
from scoring.errors import ModelLoadError
from scoring.ranker_batch import BatchedRanker, RankerBatch

log = logging.getLogger(__name__)


def resolve(ref: ModelRef, root: str | None) -> str:
    """The concrete version a ref names ('latest' -> the newest artefact)."""
    try:
        return artifact_path(ref.name, None if ref.version == "latest" else ref.version, root).name
    except Exception as e:
        raise ModelLoadError(ref.name, ref.version, str(e)) from e


def _load(ref: ModelRef, root: str | None, device: str):
    version = resolve(ref, root)
    try:
        model, manifest = load_artifact(ref.name, version, root, map_location=device)
        vocabs = load_vocabs(ref.name, version, root)
    except Exception as e:
        raise ModelLoadError(ref.name, version, str(e)) from e
    return model.to(device), manifest, vocabs


def _check_feature_layout(model, manifest: dict) -> tuple[bool, bool]:
    """(uses user features, uses item features); refuses a model trained on another vector layout
    than features/vectors.py builds now (a silent training-serving skew otherwise)."""
    c = model.config
    uses = (getattr(c, "n_user_feats", 0) > 0, getattr(c, "n_item_feats", 0) > 0)
    if any(uses):
        from features.vectors import ITEM_VECTOR_NAMES, USER_VECTOR_NAMES

        for kind, used, now in (("user", uses[0], USER_VECTOR_NAMES), ("item", uses[1], ITEM_VECTOR_NAMES)):
            trained = tuple(manifest.get(f"{kind}_vector_names") or ())
            if used and trained != tuple(now):
                raise ModelLoadError(manifest["name"], manifest["version"], f"trained on {kind} vectors {list(trained)}, "
                                     f"but features/vectors.py builds {list(now)}")
    return uses


def _hist_rows(vocab: Vocab, hist: Sequence[str], length: int) -> torch.Tensor:
    """(1, length) right-aligned item rows of the last `length` behaviours, 0-padded."""
    rows = np.zeros(length, dtype=np.int64)
    tail = vocab.encode(hist[-length:]) if hist else np.zeros(0, dtype=np.int64)
    if len(tail):
        rows[-len(tail):] = tail
    return torch.from_numpy(rows)[None, :]


class _Servable:
    """One loaded model version: the model on `device`, its manifest and vocabularies."""

    stage = ""

    def __init__(self, ref: ModelRef, root: str | None, device: str = "cpu"):
        self.model, self.manifest, self.vocabs = _load(ref, root, device)
        self.name, self.version = ref.name, self.manifest["version"]
        self.device = device


class RetrievalServable(_Servable):
    """Two-tower: user vector from the live history, exact or HNSW top-N over the item matrix."""

    stage = "retrieval"

    def __init__(self, ref: ModelRef, root: str | None, index: str = "exact", hnsw_m: int = 32,
                 hnsw_ef_search: int = 1200, device: str = "cpu"):
        super().__init__(ref, root, device)
        self.hist_len = self.model.config.hist_len
        items = self.vocabs["item"]
        self.item_ids = np.asarray(items.tokens, dtype=object)  # (V,) catalogue = the known items
        with torch.inference_mode():
            rows = torch.arange(1, len(items) + 1, device=device)
            self.item_matrix = self.model.item_vectors(rows).float().cpu().numpy()  # (V, d), L2-normalised
        self.index_kind = index
        self._index = None
        if index == "hnsw":
            import faiss

            self._index = faiss.IndexHNSWFlat(self.item_matrix.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efSearch = hnsw_ef_search
            self._index.add(self.item_matrix)

    def user_vector(self, user_id: str, hist: Sequence[str]) -> np.ndarray:
        batch = {"user": torch.tensor([self.vocabs["user"].index(user_id)], device=self.device),
                 "hist": _hist_rows(self.vocabs["item"], hist, self.hist_len).to(self.device)}
        with torch.inference_mode():
            return self.model.user_vectors(batch)[0].float().cpu().numpy()  # (d,)

    def top_n(self, user_vec: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (item ids (n,), scores (n,)) best first."""
        n = min(n, len(self.item_ids))
        if self._index is not None:
            scores, idx = self._index.search(user_vec[None, :].astype(np.float32), n)
            keep = idx[0] >= 0
            idx, scores = idx[0][keep], scores[0][keep]
        else:
            all_scores = self.item_matrix @ user_vec  # (V,)
            idx = np.argpartition(-all_scores, n - 1)[:n] if n < len(all_scores) else np.arange(len(all_scores))
            idx = idx[np.argsort(-all_scores[idx], kind="stable")]
            scores = all_scores[idx]
        return self.item_ids[idx], scores / self.model.config.temperature


class CoarseServable(_Servable):
    """HCN: the user's interests once per request, then K dot products per candidate."""

    stage = "coarse"

    def __init__(self, ref: ModelRef, root: str | None, device: str = "cpu", load_chunk_rows: int = 8192,
                 backend: Backend = "eager"):
        super().__init__(ref, root, device)
        self.uses_user_features, self.uses_item_features = _check_feature_layout(self.model, self.manifest)
        # the user's interests: eager torch or a frozen trace checked against it (scoring/backends.py)
        self.user_tower, self.backend = hcn_user_tower(self.model, backend, device, self.uses_user_features,
                                                       label=f"{ref.name}/{self.version}")
        # Without item features an item's vector depends on its row only: the whole table (known items,
        # padding and OOV rows) once here, and a request gathers its candidates' rows. In chunks, so
        # that loading a large catalogue does not hold the MLP's activations for every item at once.
        self.item_table: torch.Tensor | None = None  # (V+, d) unit vectors
        if not self.uses_item_features:
            with torch.inference_mode():
                rows = torch.arange(self.model.config.n_items, device=device)
                self.item_table = torch.cat([self.model.item_vectors(chunk) for chunk in rows.split(load_chunk_rows)])

    def score(self, user_id: str, hist: Sequence[str], items: Sequence[str], user_feats: np.ndarray | None,
              item_feats: np.ndarray | None) -> np.ndarray:
        """Returns (N,) scores of `items` for the user."""
        d = self.device
        args = (torch.tensor([self.vocabs["user"].index(user_id)], device=d),
                _hist_rows(self.vocabs["item"], hist, self.model.config.long_len).to(d))
        if self.uses_user_features:
            args += (torch.as_tensor(user_feats, device=d),)
        rows = torch.from_numpy(self.vocabs["item"].encode(items)).to(d)
        with torch.inference_mode():
            u = self.user_tower(*args)  # (1, K, d)
            v = (self.item_table[rows] if self.item_table is not None
                 else self.model.item_vectors(rows, torch.as_tensor(item_feats, device=d)))  # (N, d)
            return self.model.score(u, v)[0].float().cpu().numpy()  # (N,)


@dataclass
class RankerRequest:
    """One request's raw inputs to the ranker.

    Args:
        user_id: raw user id (unknown -> an OOV row); hist: the user's behaviours, oldest first.
        items: (M,) candidate item ids.
        tables: (S, B, d) float32 BSE bucket sums of this ranker version, or None: long-term block empty.
        user_feats: (1, Fu) float32 when the model uses user features; item_feats: (M, Fi) likewise.
    """

    user_id: str
    hist: Sequence[str]
    items: Sequence[str]
    tables: np.ndarray | None = None
    user_feats: np.ndarray | None = None
    item_feats: np.ndarray | None = None


class RankerServable(_Servable):
    """SDIM + DIN + DCNv2: long-term interest from the user's BSE tables, DIN over the last 50.

    Scores through scoring/ranker_batch.py: item-side terms once at load, and several requests'
    candidates in one forward pass (`score_heads_batch`), each request scored as it would be alone."""

    stage = "ranker"

    def __init__(self, ref: ModelRef, root: str | None, device: str = "cpu"):
        super().__init__(ref, root, device)
        c = self.model.config
        self.uses_user_features, self.uses_item_features = _check_feature_layout(self.model, self.manifest)
        self.long_term = c.long_term
        self.hasher = SdimHasher(c.sdim) if c.long_term == "sdim" else None
        emb_path = artifact_path(ref.name, self.version, root) / "item_embeddings.npy"
        self.item_table = np.load(emb_path) if emb_path.exists() else self.model.item_embedding_table()  # (V+, d)
        # signatures of every item row, once: candidates gather theirs by row
        self.item_sigs = self.hasher.signatures_np(self.item_table) if self.hasher else None  # (V+, S)
        sigs = None if self.item_sigs is None else torch.as_tensor(self.item_sigs, device=device)  # (V+, S)
        self.batched = BatchedRanker(self.model, sigs)
        # the attention baseline reads the long sequence itself; the others need only DIN's tail
        self.hist_len = c.long_len if c.long_term == "attention" else c.short_len
        # Platt scaling of the like head, fitted on validation at training (pipelines/training/cascade.py):
        # a listwise ranker's like head sees hard negatives, so its raw sigmoid is not a probability
        cal = (self.manifest.get("extra") or {}).get("like_calibration") or {}
        self.like_scale, self.like_bias = float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0))

    def long_interest(self, rows: np.ndarray, tables: np.ndarray | None) -> np.ndarray | None:
        """(M, d) SDIM interest from the user's bucket tables (S, B, d); None -> the block is empty."""
        if self.hasher is None or tables is None:
            return None
        return sdim_interest_from_tables(tables, self.item_sigs[rows]).astype(np.float32)

    def score(self, user_id: str, hist: Sequence[str], items: Sequence[str], tables: np.ndarray | None,
              user_feats: np.ndarray | None, item_feats: np.ndarray | None) -> np.ndarray:
        """Returns (M,) click probabilities of `items`. tables None: long-term block empty (zeros)."""
        return self.score_heads(user_id, hist, items, tables, user_feats, item_feats)[1]

    def score_heads(self, user_id: str, hist: Sequence[str], items: Sequence[str], tables: np.ndarray | None,
                    user_feats: np.ndarray | None, item_feats: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Returns ((M,) ordering scores, (M,) click probabilities) of `items` in one forward pass.

        A listwise ranker orders by its order head's logit; an older pointwise one by its click
        logit (the two heads are then the same head). tables None: long-term block empty (zeros)."""
        return self.score_heads_batch([RankerRequest(user_id, hist, items, tables, user_feats, item_feats)])[0]

    def score_heads_batch(self, requests: Sequence[RankerRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """score_heads of several requests in ONE forward pass: per request ((M_r,) ordering scores,
        (M_r,) calibrated click probabilities), equal to scoring each alone (within float rounding).
        Raises ValueError / KeyError naming the request's index when one request's inputs do not fit
        the model; the caller decides whether the others are scored without it (RankerStage.batch)."""
        if not requests:
            return []
        batch = self._batch(requests)
        with torch.inference_mode():
            order, like = self.batched(batch)  # (N,) each
            prob = torch.sigmoid(self.like_scale * like + self.like_bias)  # (N,)
            order, prob = order.float().cpu().numpy(), prob.float().cpu().numpy()
        bounds = np.cumsum([0, *batch.counts])
        return [(order[a:b], prob[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _batch(self, requests: Sequence[RankerRequest]) -> RankerBatch:
        """The requests' raw ids as model rows on the device, inputs checked per request."""
        c, d, item_voc = self.model.config, self.device, self.vocabs["item"]
        rows = [item_voc.encode(r.items) for r in requests]  # R x (M_r,)
        hist = torch.cat([_hist_rows(item_voc, r.hist, self.hist_len) for r in requests]).to(d)  # (R, hist_len)
        batch = RankerBatch(users=torch.tensor([self.vocabs["user"].index(r.user_id) for r in requests], device=d),
                            short_hist=hist[:, -c.short_len:], items=torch.from_numpy(np.concatenate(rows)).to(d),
                            counts=[len(x) for x in rows])
        if self.long_term == "sdim":
            shape = (c.sdim.n_signatures, c.sdim.n_buckets, c.dim)
            for i, r in enumerate(requests):
                if r.tables is not None and tuple(r.tables.shape) != shape:
                    raise ValueError(f"request {i}: tables of shape {tuple(r.tables.shape)}, "
                                     f"ranker {self.version} expects {shape}")
            zeros = np.zeros(shape, dtype=np.float32)  # no tables: the block is empty (normalised zeros pick zeros)
            batch.tables = torch.as_tensor(np.stack([zeros if r.tables is None else r.tables for r in requests]),
                                           dtype=torch.float32, device=d)  # (R, S, B, d)
        elif self.long_term != "none":
            batch.long_hist = hist
        if self.uses_user_features:
            batch.user_feats = self._dense(requests, "user_feats", lambda r: 1, c.n_user_feats)  # (R, Fu)
        if self.uses_item_features:
            batch.item_feats = self._dense(requests, "item_feats", lambda r: len(r.items), c.n_item_feats)  # (N, Fi)
        return batch

    def _dense(self, requests: Sequence[RankerRequest], key: str, n_rows, n_feats: int) -> torch.Tensor:
        parts = []
        for i, r in enumerate(requests):
            x = getattr(r, key)
            if x is None or tuple(np.shape(x)) != (n_rows(r), n_feats):
                raise ValueError(f"request {i}: ranker {self.version} uses {key} of shape ({n_rows(r)}, {n_feats}), "
                                 f"got {None if x is None else tuple(np.shape(x))}; pass "
                                 f"features.vectors.default_{key.split('_')[0]}_features(n) when there are none")
            parts.append(np.asarray(x, dtype=np.float32))
        return torch.as_tensor(np.concatenate(parts), device=self.device)


class ModelCache:
    """Loaded servables by (name, concrete version): variants sharing a version share the model,
    and a reconfigure that keeps a version does not load it again.

    Args:
        cls: RetrievalServable, CoarseServable or RankerServable; kwargs go to its constructor.
    """

    def __init__(self, cls, root: str | None, **kwargs):
        self.cls, self.root, self.kwargs = cls, root, kwargs
        self._loaded: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def __call__(self, ref: ModelRef):
        version = resolve(ref, self.root)
        with self._lock:
            key = (ref.name, version)
            if key not in self._loaded:
                self._loaded[key] = self.cls(ModelRef(name=ref.name, version=version), self.root, **self.kwargs)
                log.info("loaded %s %s/%s", self.cls.stage, ref.name, version)
            return self._loaded[key]

    def keep_only(self, versions: set[tuple[str, str]]) -> None:
        """Drop models no variant names any more (frees their memory after a swap)."""
        with self._lock:
            self._loaded = {k: v for k, v in self._loaded.items() if k in versions}


def read_manifest(ref: ModelRef, root: str | None) -> dict:
    import json

    version = resolve(ref, root)
    return json.loads((artifact_path(ref.name, version, root) / "manifest.json").read_text())


def pick_device(device: str) -> str:
    """'auto' -> cuda when this process sees a GPU, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
