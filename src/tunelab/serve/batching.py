"""Micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded asyncio queue. One worker task takes the first waiting request and every
other one already queued, then, while requests are coming concurrently (the previous batch held more
than one), keeps collecting until the batch holds `max_batch` texts or `max_wait_ms` has passed, whichever
comes first. A request that arrives alone after a batch of one is scored at once: one client at a time
would otherwise pay the whole window on every request, for company that never comes. It runs the
forward pass in a worker thread so the event loop keeps accepting and answering requests.
A request is never split across batches: one larger than max_batch is scored on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("tunelab.serve")


class QueueFull(Exception):
    """The queue holds max_queue texts already: the client should retry later (503)."""


class NotRunning(Exception):
    """The batcher was stopped (the service is shutting down)."""


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


# score(texts) -> (logits, whatever identifies the model that computed them)
ScoreFn = Callable[[Sequence[str]], tuple[np.ndarray, Any]]


class MicroBatcher:
    def __init__(
        self,
        score: ScoreFn,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._waiting_texts = 0
        self._task: asyncio.Task | None = None
        # One thread: batches run one after another; the model's own threads use the cores.
        self._executor: ThreadPoolExecutor | None = None
        self._carry: _Item | None = None  # taken from the queue but did not fit the last batch
        self._concurrent = False  # the last batch held more than one request: the next one waits for company

    @property
    def depth(self) -> int:
        """Texts waiting for a forward pass (not counting the batch being computed)."""
        return self._waiting_texts

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-forward")
        self._task = asyncio.create_task(self._run(), name="tunelab-batcher")

    async def stop(self) -> None:
        """Finish every request already queued, then stop."""
        if self._task is None:
            return
        assert self._queue is not None
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, texts: Sequence[str]) -> tuple[np.ndarray, Any]:
        """Logits for `texts` (and the model tag), computed in a shared batch."""
        if not self.running or self._queue is None:
            raise NotRunning()
        texts = list(texts)
        # Admission counts texts, not requests: the work a queue holds is what delays everyone.
        if self._waiting_texts > 0 and self._waiting_texts + len(texts) > self.max_queue:
            raise QueueFull()
        future = asyncio.get_running_loop().create_future()
        self._waiting_texts += len(texts)
        self._queue.put_nowait(_Item(texts, future))
        return await future

    async def _next_batch(self) -> list[_Item]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.texts)
        deadline = time.perf_counter() + (self.max_wait if self._concurrent else 0.0)
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.texts) > self.max_batch:
                self._carry = item  # first in the next batch: order is kept
                break
            batch.append(item)
            size += len(item.texts)
        self._concurrent = len(batch) > 1 or self._carry is not None
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            texts = [t for item in batch for t in item.texts]
            self._waiting_texts -= len(texts)
            try:
                logits, tag = await loop.run_in_executor(self._executor, self.score, texts)
            except Exception as error:  # the requests fail cleanly; the worker keeps serving
                log.exception("forward pass failed for a batch of %d texts", len(texts))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                start = 0
                for item in batch:
                    if not item.future.done():  # a client that went away cancelled its future
                        item.future.set_result((logits[start : start + len(item.texts)], tag))
                    start += len(item.texts)
                if self.on_batch:
                    self.on_batch(len(texts))
            finally:
                for _ in batch:
                    self._queue.task_done()
