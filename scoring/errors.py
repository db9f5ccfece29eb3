"""Scoring errors: each names the object and its scope."""

from __future__ import annotations

from recstream.errors import RecstreamError


class ModelLoadError(RecstreamError):
    def __init__(self, name: str, version: str, reason: str):
        self.name, self.version = name, version
        super().__init__(f"cannot load model {name!r} version {version!r}: {reason}")
