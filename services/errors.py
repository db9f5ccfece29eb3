"""Serving errors: each names the object and its scope."""

from __future__ import annotations

from recstream.errors import RecstreamError


class StageTimeout(RecstreamError):
    def __init__(self, stage: str, timeout_ms: float):
        self.stage, self.timeout_ms = stage, timeout_ms
        super().__init__(f"stage {stage!r} missed its deadline of {timeout_ms} ms")
