"""services.member_watch: a wait on a member ends when the pool declares it dead or gone, and only then."""

from __future__ import annotations

import asyncio

from membership import MemberEvent
from membership.events import EventKind
from services.member_watch import MemberWatch


def event(kind: EventKind, node: str) -> MemberEvent:
    return MemberEvent(kind, node, 1, 0.0)


async def test_dead_or_left_ends_every_wait_on_that_member_and_suspicion_does_not() -> None:
    watch = MemberWatch()
    a1, a2, b = watch.watch("a"), watch.watch("a"), watch.watch("b")
    assert a1 is not None and a2 is not None and b is not None and len(watch) == 3
    watch.on_events([event(EventKind.SUSPECT, "a"), event(EventKind.UPDATED, "b")])
    await asyncio.sleep(0)
    assert not a1.done() and not b.done(), "a suspect is usually alive"
    watch.on_events([event(EventKind.DEAD, "a")])
    assert a1.result() == "dead" and a2.result() == "dead" and not b.done()
    watch.on_events([event(EventKind.LEFT, "b")])
    assert b.result() == "left"
    assert len(watch) == 0


async def test_a_finished_wait_is_forgotten_and_cancelled() -> None:
    watch = MemberWatch()
    fut = watch.watch("a")
    watch.forget("a", fut)
    assert fut is not None and fut.cancelled() and len(watch) == 0
    watch.on_events([event(EventKind.DEAD, "a")])  # nothing left to wake: no error
    watch.forget("a", fut)  # twice: harmless
    watch.forget("a", None)
    assert len(watch) == 0
