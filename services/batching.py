"""Batching for a stage that runs in the ingress replica (`ranker_deployment: false`).

The ranker deployment batches with `@serve.batch`; a ranker in the ingress had no batching, so
concurrent requests of one replica ran one forward pass each, every one its own thread hop. Here
the requests that arrive while a batch is being scored wait for the next one and are scored
together (`RankerStage.batch`: one forward pass per model version). An idle replica adds no
wait: a lone request starts its batch at once, unless `wait_timeout_s` asks to wait for company.

A request whose caller stopped waiting (its deadline passed) is dropped from the batch it had not
yet joined; one already in a batch is scored and its result discarded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services import metrics as m


class LocalBatcher:
    """Wraps a stage with a `batch(list[req]) -> list[result]` method (never raising) as an async callable.

    Args:
        stage: the in-process stage (RankerStage).
        max_batch_size: most requests in one batch.
        wait_timeout_s: how long a batch that is not full waits for more requests before it starts.
    """

    def __init__(self, stage: Any, max_batch_size: int = 8, wait_timeout_s: float = 0.0):
        if max_batch_size < 1 or wait_timeout_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_timeout_s >= 0, got {max_batch_size}, {wait_timeout_s}")
        self.stage, self.max_batch_size, self.wait_timeout_s = stage, max_batch_size, wait_timeout_s
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._more: asyncio.Event | None = None  # made on the replica's event loop, at the first request

    async def __call__(self, req: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        if self._more is None:
            self._more = asyncio.Event()
        self._more.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            until = loop.time() + self.wait_timeout_s
            while len(self._queue) < self.max_batch_size and loop.time() < until:
                self._more.clear()
                try:
                    await asyncio.wait_for(self._more.wait(), until - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = [(r, f) for r, f in self._queue[: self.max_batch_size] if not f.done()]
            del self._queue[: self.max_batch_size]
            if not batch:
                continue
            m.RANKER_BATCH.observe(len(batch))
            try:
                results = await asyncio.to_thread(self.stage.batch, [r for r, _ in batch])
            except BaseException as e:  # batch() does not raise; should it, no caller waits forever
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
                if not isinstance(e, Exception):
                    raise
                continue
            for (_, f), res in zip(batch, results):
                if not f.done():
                    f.set_result(res)
