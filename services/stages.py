"""Serving stages: plain Python objects with a typed call.

The same objects run in-process inside the ingress replica (fused layout) or each behind its own
Ray Serve deployment (split layout); see services/app.py. A stage never raises for a dependency
outage: it returns what it can with `degraded=True` and a reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    items: list[tuple[str, float]]  # (item_id, score), best first
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)


class PopularityCandidates:
    """Popular items the user has not interacted with.

    Args:
        client: Redis holding `<prefix>:pop` and `<prefix>:seen:<user>` (written by the popularity processor).
        pool_size: popular items cached in the replica; refreshed every refresh_s.
    """

    name = "candidates"

    def __init__(self, client: redis.Redis, prefix: str = "rs", pool_size: int = 1000, refresh_s: float = 2.0):
        self.r = client
        self.prefix = prefix
        self.pool_size = pool_size
        self.refresh_s = refresh_s
        self._pool: list[tuple[str, float]] = []
        self._pool_at = 0.0
        self._lock = threading.Lock()

    def _popular(self) -> tuple[list[tuple[str, float]], bool]:
        """The cached popular pool, refreshed when stale. Returns (pool, fresh_ok)."""
        now = time.monotonic()
        if now - self._pool_at < self.refresh_s and self._pool:
            return self._pool, True
        with self._lock:
            try:
                raw = self.r.zrevrange(f"{self.prefix}:pop", 0, self.pool_size - 1, withscores=True)
                self._pool = [(i.decode() if isinstance(i, bytes) else i, float(s)) for i, s in raw]
                self._pool_at = now
                return self._pool, True
            except redis.RedisError as e:
                # Keep serving the last pool we had: stale popularity beats an error page.
                log.warning("candidates: popularity refresh failed (%s); serving cached pool of %d", e, len(self._pool))
                return self._pool, False

    def __call__(self, user_id: str, k: int, exclude: list[str] | None = None) -> StageResult:
        pool, ok = self._popular()
        res = StageResult(items=[])
        if not ok:
            res.degraded, res.reasons = True, ["popularity_unavailable"]
        banned = set(exclude or ())
        pool = [(i, s) for i, s in pool if i not in banned]
        try:
            # SMISMEMBER answers for the whole pool in one round trip, whatever the user's history size.
            seen = self.r.smismember(f"{self.prefix}:seen:{user_id}", [i for i, _ in pool]) if pool else []
            res.items = [p for p, s in zip(pool, seen) if not s][:k]
        except redis.RedisError as e:
            log.warning("candidates: seen-filter read failed for user %s (%s)", user_id, e)
            res.degraded = True
            res.reasons.append("seen_filter_unavailable")
            res.items = pool[:k]
        return res
