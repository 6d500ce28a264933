"""Micro-batching: concurrent requests share one model call.

A request puts its items on the queue and waits. The worker wakes on the
first item, waits ``window`` seconds for others to arrive, then takes queued
requests in arrival order while their items fit in ``max_items`` (a larger
request goes alone), and runs ``run(items)`` once in a thread. Requests that
arrive while the model runs form the next batch, so under load the window
costs nothing and batches grow with the load. One call at a time: the model
already uses every core, and two would only contend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]


@dataclass(slots=True)
class BatchStats:
    calls: int = 0
    """Model calls made."""
    requests: int = 0
    """Requests served by those calls."""
    items: int = 0
    largest: int = 0
    """Most items in one call."""
    sizes: list[int] = field(default_factory=list)


class Batcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], list[R]], window: float = 0.005, max_items: int = 64) -> None:
        """``run(items)`` returns one result per item, in order."""
        if window < 0 or max_items < 1:
            raise ValueError("need window >= 0 and max_items >= 1")
        self._run = run
        self.window = window
        self.max_items = max_items
        self.stats = BatchStats()
        self._queue: deque[_Pending[T, R]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[_Pending[T, R]] = []
        """The batch the model is working on: out of the queue, its waiters not yet answered."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The batch cancelled mid-call too: its waiters would otherwise hang until the HTTP
        # server's shutdown timeout (60 s), keeping a child whose daemon died alive that long.
        for p in [*self._running, *self._queue]:
            if not p.future.done():
                p.future.set_exception(RuntimeError("batcher closed"))
        self._running = []
        self._queue.clear()

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items, future))
        self._wake.set()
        return await future

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            if self.window:
                await asyncio.sleep(self.window)
            batch = self._take()
            if not self._queue:
                self._wake.clear()
            if not batch:
                continue
            items = [item for p in batch for item in p.items]
            self._running = batch  # left set when cancelled: close() answers these waiters
            try:
                results = await asyncio.to_thread(self._run, items)
            except Exception as exc:  # noqa: BLE001 -- the model failed: every waiter gets the error, the worker goes on
                self._running = []
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._running = []
            self._count(len(batch), len(items))
            start = 0
            for p in batch:
                end = start + len(p.items)
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(results[start:end])
                start = end

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        n = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            if batch and n + len(head.items) > self.max_items:
                break
            batch.append(self._queue.popleft())
            n += len(head.items)
        return batch

    def _count(self, requests: int, items: int) -> None:
        s = self.stats
        s.calls += 1
        s.requests += requests
        s.items += items
        s.largest = max(s.largest, items)
        if len(s.sizes) < 1000:  # bounded: kept for tests and the benchmark
            s.sizes.append(requests)
