"""What the machine hands its driver besides datagrams: member events and TCP requests.

The kinds are ``StrEnum``s: each member *is* its lowercase string, so a
driver that compares ``ev.kind == "dead"``, formats it into a log line or
uses it as a dict key gets exactly what it got when kinds were plain strings
(and the simulator's event-log digests do not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from membership.messages import Addr, Alive


class EventKind(StrEnum):
    JOINED = "joined"
    """A member we did not know."""
    UPDATED = "updated"
    """A newer incarnation of an alive member (new metadata, or a refutation we had not doubted)."""
    SUSPECT = "suspect"
    ALIVE = "alive"
    """A suspect, dead or left member is alive again (recovered or refuted); ``detail`` says what it was."""
    DEAD = "dead"
    LEFT = "left"
    REAPED = "reaped"
    """A dead or left member was forgotten after ``reap_after``."""
    CONFLICT = "conflict"
    """Another daemon uses our identity; ``record`` is its signed alive."""


class MemberEvent(NamedTuple):
    """Something changed about a member (see ``EventKind``).

    A named tuple (immutable, and cheap to make: a 1,000-node join storm makes a million)."""

    kind: EventKind
    node: str
    incarnation: int
    at: float
    detail: str = ""
    """The accuser of a suspicion or death, the former status of a recovered member, the other
    address of a conflict."""
    record: Alive | None = None
    """For ``conflict``: the signed alive record of the other daemon using our identity."""


class StreamKind(StrEnum):
    """What a TCP exchange is for (a driver may give a probe a shorter timeout than a push-pull)."""

    PUSH_PULL = "push-pull"
    """Anti-entropy or join: a digest out, the states that differ back."""
    STATES = "states"
    """The records a push-pull peer asked for; no reply."""
    PING = "ping"
    """Lifeguard's TCP fallback probe; an ack back."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One TCP exchange the driver must perform: send ``payload`` to ``addr``.

    When ``expect_reply`` the driver reads one frame back and passes it (or
    None on any failure) to ``Membership.stream_reply(token, ...)``.
    """

    token: int
    addr: Addr
    payload: bytes
    expect_reply: bool
    kind: StreamKind
