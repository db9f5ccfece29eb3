"""Errors of the `features` package. Each names the object (table version, user, view, group)."""

from __future__ import annotations

from recstream.errors import RecstreamError


class FeatureError(RecstreamError):
    """Base class of every error raised by `features`."""


class UnknownTableVersion(FeatureError):
    """A BSE table version was asked for that the store has not registered."""

    def __init__(self, version: str, known: list[str]):
        super().__init__(f"BSE table version {version!r} is not registered (known: {sorted(known)})")
        self.version = version
        self.known = known


class TableVersionMismatch(FeatureError):
    """Two writers disagree on the parameters of one table version (would silently corrupt sums)."""

    def __init__(self, version: str, field: str, stored: str, given: str):
        super().__init__(
            f"BSE table version {version!r}: {field} stored as {stored!r} but this writer has {given!r}"
        )
        self.version = version
        self.field = field


class MissingEmbeddings(FeatureError):
    """A write path (apply/rebuild) was asked of a table version registered for lookup only."""

    def __init__(self, version: str):
        super().__init__(f"BSE table version {version!r} has no item embeddings; it can serve lookups only")
        self.version = version


class CorruptTable(FeatureError):
    """A stored BSE table blob does not decode."""

    def __init__(self, user_id: str, version: str, reason: str):
        super().__init__(f"BSE table of user {user_id!r}, version {version!r} is corrupt: {reason}")
        self.user_id = user_id
        self.version = version


class ApplyConflict(FeatureError):
    """An apply kept losing its compare-and-set against concurrent writers of the same users/partitions."""

    def __init__(self, group: str, attempts: int):
        super().__init__(
            f"BSE apply for consumer group {group!r} lost its compare-and-set {attempts} times; "
            "another writer owns these users or partitions"
        )
        self.group = group
        self.attempts = attempts


class EmbeddingDimMismatch(FeatureError):
    """Embeddings of the wrong width were passed for a table version."""

    def __init__(self, version: str, expected_dim: int, got_shape: tuple[int, ...]):
        super().__init__(f"BSE table version {version!r} expects (N, {expected_dim}) embeddings, got {got_shape}")
        self.version = version


class FeatureViewMissing(FeatureError):
    """A Feast feature view is not in the applied registry."""

    def __init__(self, view: str, project: str):
        super().__init__(f"feature view {view!r} not found in Feast project {project!r}; run apply_repo first")
        self.view = view
        self.project = project


class FeatureRepoError(FeatureError):
    """The Feast repository could not be applied or read."""

    def __init__(self, repo_dir: str, reason: str):
        super().__init__(f"Feast repository {repo_dir!r}: {reason}")
        self.repo_dir = repo_dir


class ItemFeatureSchemaMismatch(FeatureError):
    """A packed item-feature blob was written with another schema than the reader's."""

    def __init__(self, item_id: str, stored: str, expected: str):
        super().__init__(f"item features of {item_id!r}: blob schema {stored!r} != reader schema {expected!r}")
        self.item_id = item_id
