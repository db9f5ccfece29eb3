"""A circuit breaker per serving stage (and so per replica set behind its handle).

Without one, a dead stage replica costs every request its full deadline, one after another,
until Ray Serve has replaced it (measured: 17 answers in 18 s at 4 clients with the ranker
replica SIGKILLed). With one, the stage is noticed dead once:

    closed     every request calls the stage; `failures_to_open` consecutive failures (an error
               or a missed deadline) open the breaker
    open       for `open_ms` every request takes the stage's fallback at once (reason
               `circuit_open`), as fast as the degraded path itself
    half-open  after that, exactly one request probes the stage while the others keep falling
               back; its success closes the breaker, its failure opens it again

State is per ingress replica and touched only from its event loop, so it needs no lock.
"""

from __future__ import annotations

import time
from typing import Callable

from services import metrics as m
from services.config import CircuitBreakerConfig


class CircuitBreaker:
    def __init__(self, stage: str, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.stage, self.config, self.clock = stage, config, clock
        self.failures = 0
        self.open_until: float | None = None  # None: closed
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def allow(self) -> bool:
        """Whether this request may call the stage (claims the probe when one is due)."""
        if self.open_until is None:
            return True
        if self.probing or self.clock() < self.open_until:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.failures, self.probing = 0, False
        if self.open_until is not None:
            self.open_until = None
            m.BREAKER_OPEN.labels(self.stage).set(0)

    def failure(self) -> None:
        self.failures += 1
        if self.probing or (self.open_until is None and self.failures >= self.config.failures_to_open):
            if self.open_until is None:
                m.BREAKER_TRIPS.labels(self.stage).inc()
                m.BREAKER_OPEN.labels(self.stage).set(1)
            self.open_until = self.clock() + self.config.open_ms / 1000
            self.probing = False
