"""The micro-batcher on its own: grouping, the size cap, order, and errors reaching every waiter."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.runners.batching import Batcher


async def test_concurrent_requests_share_one_call_and_get_their_own_results() -> None:
    calls: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        calls.append(items)
        return [s.upper() for s in items]

    b: Batcher[str, str] = Batcher(run, window=0.05, max_items=64)
    b.start()
    try:
        got = await asyncio.gather(*(b.submit([f"a{i}", f"b{i}"]) for i in range(10)))
    finally:
        await b.close()
    assert got == [[f"A{i}", f"B{i}"] for i in range(10)]
    assert len(calls) == 1 and b.stats.calls == 1 and b.stats.requests == 10 and b.stats.largest == 20


async def test_the_cap_splits_batches_and_an_oversized_request_goes_alone() -> None:
    sizes: list[int] = []
    b: Batcher[int, int] = Batcher(lambda xs: (sizes.append(len(xs)), xs)[1], window=0.05, max_items=4)
    b.start()
    try:
        got = await asyncio.gather(b.submit([1, 2, 3]), b.submit([4, 5]), b.submit(list(range(10))), b.submit([6]))
    finally:
        await b.close()
    assert got == [[1, 2, 3], [4, 5], list(range(10)), [6]]
    assert sizes == [3, 2, 10, 1]  # arrival order kept; [4, 5] does not fit beside [1, 2, 3]


async def test_requests_arriving_during_a_call_form_the_next_batch() -> None:
    gate = threading.Event()
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        sizes.append(len(items))
        return items

    b: Batcher[int, int] = Batcher(run, window=0.0, max_items=100)
    b.start()
    try:
        first = asyncio.create_task(b.submit([0]))
        await asyncio.sleep(0.05)  # the first call is running, blocked on the gate
        rest = [asyncio.create_task(b.submit([i])) for i in range(1, 8)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await b.close()
    assert sizes == [1, 7]


async def test_a_failing_call_fails_its_batch_and_the_batcher_goes_on() -> None:
    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return items

    b: Batcher[int, int] = Batcher(run, window=0.02)
    b.start()
    try:
        bad = await asyncio.gather(b.submit([1]), b.submit([13]), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in bad)
        assert await b.submit([2]) == [2]
    finally:
        await b.close()


async def test_closing_mid_call_answers_the_running_batch_and_the_queue_at_once() -> None:
    """A child stopping (its daemon died) must not leave handlers waiting on a batch the model was running."""
    gate = threading.Event()
    b: Batcher[int, int] = Batcher(lambda xs: (gate.wait(5), xs)[1], window=0.0, max_items=1)
    b.start()
    running = asyncio.create_task(b.submit([1]))
    await asyncio.sleep(0.05)  # [1] is in the model call, blocked on the gate
    queued = asyncio.create_task(b.submit([2]))
    await asyncio.sleep(0.01)
    await b.close()
    done = await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 1.0)
    gate.set()
    assert [str(r) for r in done] == ["batcher closed", "batcher closed"]


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Batcher(lambda xs: xs, window=-1)
    with pytest.raises(ValueError):
        Batcher(lambda xs: xs, max_items=0)
