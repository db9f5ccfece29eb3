"""The promotion guard for one stage trained on its own (`recstream train --model hcn|ranker`).

A new HCN or ranker version is marked latest only when the whole cascade with it (the other two
stages at their latest versions, the fusion the ranker artefact carries) is at least as good on
validation Recall@k as the cascade without that stage; otherwise the version stays saved, the
previous one stays latest, and the message says by how much the new one lowers the cascade.
`recstream train cascade` applies the same rule to all three stages at once
(pipelines/training/cascade.py `save_cascade`).

Not checked (the version is promoted as before, and the message says why): a stage whose
cascade partners are missing, a model that takes dense stream features (the cascade evaluation
scores ids and sequences), and a model whose item vocabulary is not ML-100k's retrieval one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GUARDED = ("hcn", "ranker")
# the cascade without the stage (pipelines.training.cascade.evaluate_cascade's prefixes)
WITHOUT = {"ranker": "two_tower_hcn", "hcn": "two_tower_ranker"}


@dataclass(frozen=True)
class GuardResult:
    promoted: bool
    message: str
    valid: dict[str, float] | None = None


def _takes_features(model) -> bool:
    c = model.config
    return getattr(c, "n_user_feats", 0) > 0 or getattr(c, "n_item_feats", 0) > 0


def guard_stage(stage: str, version: str, previous: str | None, root: str | Path | None = None, splits=None,
                cfg=None) -> GuardResult:
    """Promote `version` of `stage` (hcn or ranker) if the cascade keeps its validation Recall@k.

    Args:
        previous: the stage's latest version before `version` was saved (None: it had none); kept
            latest when the new one is refused.
        splits: ML-100k retrieval splits (default: the standard protocol's, from the dataset).
        cfg: the cascade's cut sizes and k (pipelines.training.cascade.CascadeConfig; default its defaults).
    """
    from features.model_store import ArtifactNotFound, latest_version, load_artifact, promote
    from pipelines.training.cascade import CascadeConfig, CascadeModels, evaluate_cascade
    from scoring.fusion import manifest_fusion

    cfg = cfg or CascadeConfig()
    k = cfg.k
    if stage not in GUARDED:
        raise ValueError(f"guard_stage: stage {stage!r} is not one of {GUARDED}")
    versions = {stage: version}
    try:
        for other in ("two_tower", "hcn", "ranker"):
            if other != stage:
                versions[other] = latest_version(other, root)
    except ArtifactNotFound as e:
        promote(stage, version, root)
        return GuardResult(True, f"{stage} {version} marked latest: no cascade to compare it with ({e})")
    loaded = {name: load_artifact(name, v, root) for name, v in versions.items()}
    if _takes_features(loaded[stage][0]):
        promote(stage, version, root)
        return GuardResult(True, f"{stage} {version} marked latest without the cascade check: it takes dense stream "
                                 "features, and the cascade evaluation scores ids and sequences only")
    if splits is None:
        from pipelines.training.jobs import TrainJob, load_splits

        splits = load_splits(TrainJob(model="hcn", data="ml100k"))
    from features.model_store import load_vocabs

    items = list(splits.vocabs["item"].tokens)
    off = [n for n, v in versions.items() if list(load_vocabs(n, v, root)["item"].tokens) != items]
    if off:
        promote(stage, version, root)
        return GuardResult(True, f"{stage} {version} marked latest without the cascade check: {off} were trained on "
                                 "another item vocabulary than ML-100k's retrieval splits")
    models = CascadeModels(**{n: m for n, (m, _) in loaded.items()})  # artefact names are the slots
    fusion = manifest_fusion(loaded["ranker"][1])
    valid = evaluate_cascade(models, fusion, splits, "valid", cfg)
    label = f"{stage} {version}"
    full, without = valid[f"cascade_recall_at_{k}"], valid[f"{WITHOUT[stage]}_recall_at_{k}"]
    others = ", ".join(f"{n} {v}" for n, v in versions.items() if n != stage)
    if full < without:
        if previous is not None:
            promote(stage, previous, root)  # pinned: without a LATEST file the newest version would win
        return GuardResult(False, f"{label} lowers validation Recall@{k} of the cascade from {without:.4f} to {full:.4f} "
                                  f"({full - without:+.4f}): not marked latest (with {others}); latest stays "
                                  f"{previous or 'unset'}", valid)
    promote(stage, version, root)
    return GuardResult(True, f"{label} marked latest: validation Recall@{k} of the cascade with it "
                             f"{valid[f'cascade_recall_at_{k}']:.4f} (with {others})", valid)
