"""Member status transitions: every rule in one table.

Rules (SWIM with incarnation numbers, as memberlist applies them). ``inc`` is
what we hold for the member, ``m`` the message's incarnation:

=============  ======================  ======================================
message        about another member    about ourselves
=============  ======================  ======================================
alive(m)       unknown → APPLY (join)  m > inc → REFUTE (an older life of ours
               m > inc → APPLY          claims a newer incarnation)
               else IGNORE             else IGNORE
suspect(m)     unknown → IGNORE        m < inc → IGNORE
               m < inc → IGNORE        else REFUTE (alive at max(inc, m) + 1)
               dead/left → IGNORE
               suspect → CONFIRM
               alive → APPLY (suspect)
dead(m, a)     unknown → IGNORE        leaving and a == us → APPLY (left)
               m < inc → IGNORE        m < inc → IGNORE
               dead/left → IGNORE      else REFUTE
               a == member → APPLY (left), else APPLY (dead)
=============  ======================  ======================================

A push-pull merge feeds remote states through the same table, except that a
remote *dead* verdict becomes a local *suspect* (memberlist's mergeState): we
give the member a chance to refute rather than trusting one peer's word, which
is what lets a healed partition merge back without false deaths.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from membership.errors import LocalProtocolError


class Status(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_down(self) -> bool:
        return self in (Status.DEAD, Status.LEFT)


class Verdict(Enum):
    IGNORE = "ignore"
    APPLY = "apply"
    REFUTE = "refute"
    CONFIRM = "confirm"


def on_alive(status: Status | None, inc: int, m: int, about_self: bool) -> Verdict:
    if about_self:
        return Verdict.REFUTE if m > inc else Verdict.IGNORE
    if status is None or m > inc:
        return Verdict.APPLY
    return Verdict.IGNORE


def on_suspect(status: Status | None, inc: int, m: int, about_self: bool) -> Verdict:
    if about_self:
        return Verdict.IGNORE if m < inc else Verdict.REFUTE
    if status is None or m < inc or status.is_down:
        return Verdict.IGNORE
    if status is Status.SUSPECT:
        return Verdict.CONFIRM
    return Verdict.APPLY


def on_dead(
    status: Status | None, inc: int, m: int, about_self: bool, by_self: bool, leaving: bool
) -> Verdict:
    if about_self:
        if leaving and by_self:
            return Verdict.APPLY
        return Verdict.IGNORE if m < inc else Verdict.REFUTE
    if status is None or m < inc or status.is_down:
        return Verdict.IGNORE
    return Verdict.APPLY


def refuted_incarnation(ours: int, claimed: int) -> int:
    """The incarnation a refutation announces: strictly above both."""
    return max(ours, claimed) + 1


def check_transition(old: Status | None, new: Status) -> None:
    """Raise LocalProtocolError for moves no rule above produces (our bug, not a peer's)."""
    if old is Status.LEFT and new in (Status.SUSPECT, Status.DEAD):
        raise LocalProtocolError(f"a member that left cannot become {new.label}")
    if old is Status.DEAD and new is Status.SUSPECT:
        raise LocalProtocolError("a dead member cannot become suspect without an alive first")
