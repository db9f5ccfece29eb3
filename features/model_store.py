"""Model artefacts (the model store): artifacts/models/<name>/<version>/{weights.pt, vocab.json, manifest.json[, item_embeddings.npy]}.

The manifest alone rebuilds the model (registry key + config), and says what it was trained on
(data window), how well it did (metrics) and from which code (git revision). Rankers also store
their item embedding table as numpy, which the BSE hashes for the deployed version. Models that
can take dense stream features (ranker, HCN) name them: `user_vector_names` / `item_vector_names`
(lists in input order, empty when the model takes none; serving builds exactly these vectors with
`features.vectors`) and `feature_source` ("feast_offline" or "none").

The root is `artifacts/` at the repository root, or $RECSTREAM_ARTIFACTS_DIR, or the `root` argument.

Which version is "latest": the one `models/<name>/LATEST` names (written by `promote`, atomically),
so that a saved version is served only once promoted (the cascade's promotion guard,
pipelines/training/cascade.py). Without a LATEST file the newest version by created_at, as before
promotion existed, so older artefact directories keep working.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import MODELS, build_model
from models.layers import Vocab
from recstream.errors import RecstreamError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
LATEST = "LATEST"  # models/<name>/LATEST: the promoted version's name, one line


class ArtifactNotFound(RecstreamError):
    def __init__(self, name: str, version: str | None, root: Path):
        super().__init__(f"model artefact {name!r} version {version or 'latest'!r} not found under {root}")


def artifacts_root(root: str | Path | None = None) -> Path:
    """The artefacts root (holding models/): argument > $RECSTREAM_ARTIFACTS_DIR > <repo>/artifacts."""
    return Path(root or os.environ.get("RECSTREAM_ARTIFACTS_DIR") or REPO_ROOT / "artifacts")


def new_version() -> str:
    """A sortable version string: UTC time to the microsecond."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def code_revision() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": commit or "unknown", "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def model_key(model: nn.Module) -> str:
    """The registry name that rebuilds this model (baselines are told apart by their config)."""
    cfg = model.config
    for key, spec in MODELS.items():
        if type(model) is spec.model_cls and all(getattr(cfg, k) == v for k, v in spec.defaults.items()):
            return key
    raise ValueError(f"model class {type(model).__name__} is not in models.MODELS")


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def _feature_vector_keys(config: dict[str, Any], feature_vectors: dict[str, Any] | None) -> dict[str, Any]:
    """Manifest keys naming the dense feature vectors a model takes (models without such inputs: none)."""
    if "n_user_feats" not in config:
        if feature_vectors:
            raise ValueError("feature_vectors given for a model without dense feature inputs")
        return {}
    fv = feature_vectors or {}
    out = {"user_vector_names": list(fv.get("user_vector_names", [])),
           "item_vector_names": list(fv.get("item_vector_names", []))}
    for kind in ("user", "item"):
        n = int(config.get(f"n_{kind}_feats", 0))
        if len(out[f"{kind}_vector_names"]) != n:
            raise ValueError(f"{kind}_vector_names ({len(out[f'{kind}_vector_names'])} names) must match the "
                             f"config's n_{kind}_feats ({n})")
    out["feature_source"] = fv.get("source", "none") if (out["user_vector_names"] or out["item_vector_names"]) else "none"
    return out


def save_artifact(
    name: str,
    version: str | None,
    model: nn.Module,
    config: Any,
    vocab: dict[str, Vocab],
    metrics: dict[str, float],
    data_window: dict[str, Any],
    root: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    feature_vectors: dict[str, Any] | None = None,
) -> Path:
    """Write one model version; returns its directory.

    Args:
        name: artefact name (e.g. "ranker"); version: None = new_version().
        config: the model's config dataclass (or a dict); training settings go in `extra`.
        vocab: {"user": Vocab, "item": Vocab, ...} mapping raw ids to embedding rows.
        metrics: evaluation results; data_window: what the model was trained and evaluated on.
        feature_vectors: {"user_vector_names": [...], "item_vector_names": [...], "source": ...} of a
            model trained with dense features (Splits.meta["features"]); their lengths must match
            the config's n_user_feats / n_item_feats.
    Raises:
        FileExistsError: the version already exists (versions are immutable).
        ValueError: the feature names do not match the model's feature widths.
    """
    vectors = _feature_vector_keys(_jsonable(config), feature_vectors)
    version = version or new_version()
    out = artifacts_root(root) / "models" / name / version
    if out.exists():
        raise FileExistsError(f"artefact {name!r} version {version!r} already exists at {out}")
    tmp = out.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
    (tmp / "vocab.json").write_text(json.dumps({k: v.to_dict() for k, v in vocab.items()}))
    files = ["weights.pt", "vocab.json"]
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "model": model_key(model),
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "config": _jsonable(config),
        "metrics": _jsonable(metrics),
        "data_window": _jsonable(data_window),
        "code_revision": code_revision(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "torch_version": torch.__version__,
        **vectors,
    }
    if hasattr(model, "item_embedding_table"):
        np.save(tmp / "item_embeddings.npy", model.item_embedding_table())
        files.append("item_embeddings.npy")
        sdim_cfg = getattr(model.config, "sdim", None)
        if sdim_cfg is not None:
            from models.sdim_hash import SdimHasher

            manifest["sdim_hasher_version"] = SdimHasher(sdim_cfg).version
    manifest["files"] = files + [MANIFEST]
    if extra:
        manifest["extra"] = _jsonable(extra)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.rename(out)  # a half-written version is never visible
    log.info("saved %s/%s to %s", name, version, out)
    return out


def list_versions(name: str, root: str | Path | None = None) -> list[str]:
    """Versions of `name`, oldest first (by manifest created_at, then version)."""
    base = artifacts_root(root) / "models" / name
    rows = []
    for d in base.glob("*"):
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).exists():
            rows.append((json.loads((d / MANIFEST).read_text()).get("created_at", ""), d.name))
    return [v for _, v in sorted(rows)]


def promoted_version(name: str, root: str | Path | None = None) -> str | None:
    """The version models/<name>/LATEST names, or None when nothing was promoted."""
    pointer = artifacts_root(root) / "models" / name / LATEST
    if not pointer.exists():
        return None
    return pointer.read_text().strip() or None


def promote(name: str, version: str, root: str | Path | None = None) -> Path:
    """Mark `version` of `name` as latest (what 'latest' refs and load_artifact(version=None) load).

    Raises:
        ArtifactNotFound: no such saved version (a pointer to nothing is never written).
    """
    base = artifacts_root(root) / "models" / name
    if not (base / version / MANIFEST).exists():
        raise ArtifactNotFound(name, version, artifacts_root(root))
    tmp = base / f".{LATEST}.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(base / LATEST)  # atomic: a reader sees the old or the new pointer, never half of one
    log.info("promoted %s/%s to latest", name, version)
    return base / LATEST


def latest_version(name: str, root: str | Path | None = None) -> str:
    """The promoted version, or (no LATEST file) the newest by created_at."""
    promoted = promoted_version(name, root)
    if promoted is not None:
        return promoted
    versions = list_versions(name, root)
    if not versions:
        raise ArtifactNotFound(name, None, artifacts_root(root))
    return versions[-1]


def artifact_path(name: str, version: str | None = None, root: str | Path | None = None) -> Path:
    """The directory of `version` of `name` (None = latest_version)."""
    if version is None:
        version = latest_version(name, root)
    path = artifacts_root(root) / "models" / name / version
    if not (path / MANIFEST).exists():
        raise ArtifactNotFound(name, version, artifacts_root(root))
    return path


def load_artifact(name: str, version: str | None = None, root: str | Path | None = None,
                  map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a model version (None = the latest) in eval mode; returns (model, manifest)."""
    path = artifact_path(name, version, root)
    manifest = json.loads((path / MANIFEST).read_text())
    model = build_model(manifest["model"], manifest["config"])
    model.load_state_dict(torch.load(path / "weights.pt", map_location=map_location))
    manifest["path"] = str(path)
    return model.eval(), manifest


def load_vocabs(name: str, version: str | None = None, root: str | Path | None = None) -> dict[str, Vocab]:
    path = artifact_path(name, version, root)
    return {k: Vocab.from_dict(v) for k, v in json.loads((path / "vocab.json").read_text()).items()}


def load_item_embeddings(name: str = "ranker", version: str | None = None,
                         root: str | Path | None = None) -> tuple[np.ndarray, Vocab, str | None]:
    """For the BSE: (item embedding table (n_item_rows, d) float32, item Vocab, SDIM hasher version)."""
    path = artifact_path(name, version, root)
    manifest = json.loads((path / MANIFEST).read_text())
    if not (path / "item_embeddings.npy").exists():
        raise ArtifactNotFound(f"{name} item embeddings", manifest["version"], artifacts_root(root))
    return np.load(path / "item_embeddings.npy"), load_vocabs(name, manifest["version"], root)["item"], manifest.get("sdim_hasher_version")
