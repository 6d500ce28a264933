"""Drive a node's copy of a stateful service to the role the view gives it; say what to gossip.

The manager keeps one ``ReplicaDriver`` per stateful service it runs. On
every view change (and every reconcile tick) it computes
``allocator.replicas.primary_of(service, copies)`` from the view (every
node's gossiped ``Claim`` plus its liveness) and calls
``driver.apply(roles, endpoints)``; then it gossips ``driver.claim``.

- chosen as primary: ``set_role("primary")`` (a replica is promoted, keeping
  its data); the claim becomes ``(roles.epoch, primary=True)``;
- a replica: ``set_role("replica", endpoint of the primary)``; its claim
  takes the primary's epoch only once it streams from it (until then its
  data is not known to hold that history, so it is not a promotion
  candidate for it);
- no primary in the view (the copies with data are all gone): nothing
  changes; a replica keeps what it has and waits.

The claim is kept in ``<service dir>/replication.json`` so that a restarted
node knows which history its data belongs to, and that it was primary:
it then claims its old epoch and, if another copy was promoted meanwhile,
loses to it and follows it (``primary_of``, rule 1). The manager must call
``apply`` only once its view holds the other nodes' claims (after the
join's full state sync), or a returning old primary could act on a view
that has not heard of its successor.

PostgreSQL's synchronous commit is turned on only while the primary has a
replica in the view (a commit would otherwise wait for ever). Turning it
off when the replica dies is the one step that lets this copy acknowledge
writes no other copy holds, so it waits for a majority of the pool heard
first-hand *after* the replica's death (``heard_since``; the manager probes
the members meanwhile). A view lags: a primary cut off from the pool first
sees its replica dead while the other members still look alive, and the
other side promotes that very replica. Without the wait, commits taken
alone between the two verdicts were lost when the partition healed.
A replica's promotion waits the same way (the primary's death is the
event): a replica cut off alone sees its primary dead while a third member
still looks alive, and would otherwise claim a higher epoch that wins over
the real primary's writes when the partition heals.

Fencing (``quorum`` False: this node's view has no majority of the pool,
``allocator.replicas.has_quorum``): a copy chosen as primary is not
promoted, and one that is primary refuses writes (``set_fenced``: Redis
answers ``NOREPLICAS``, PostgreSQL makes transactions read-only and ends
the sessions waiting on a synchronous commit) and keeps synchronous commit
as it is, so nothing is acknowledged that the other side's promotion would
discard. The fence lifts when the majority is back. A copy that was
primary and finds a newer primary (after a partition, or a missed
failover) logs a warning with its replication position before it follows:
the writes it took that the new primary lacks are discarded, and said so.

``converge`` is the whole step for one service, as the manager runs it:
copies from the view and the claims, ``primary_of``, ``apply``, and the
local forwarder retargeted to the primary (``services.service_proxy``).
``endpoints`` says where each member's copy listens, from its gossiped
metadata (the host of its ``http`` address, or its gossip host when that is
a wildcard, and the service's port in ``service_ports``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from allocator.replicas import Copy, Roles, copies, primary_of
from allocator.view import NodeView
from membership import MemberView
from p2p.identity import atomic_write
from services.routing import serving_members
from services.service_proxy import ServiceProxy
from services.stateful import Endpoint, StatefulRunner

log = logging.getLogger(__name__)

STATE_FILE = "replication.json"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a node gossips about its copy of a stateful service."""

    epoch: int = 0
    primary: bool = False


def load_claim(service_dir: Path) -> Claim:
    """The claim kept in ``service_dir``; an absent or unreadable file is no data (epoch 0)."""
    try:
        raw = json.loads((service_dir / STATE_FILE).read_text())
        epoch, primary = raw["epoch"], raw["primary"]
        if isinstance(epoch, int) and epoch >= 0 and isinstance(primary, bool):
            return Claim(epoch, primary)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Claim()


class ReplicaDriver:
    def __init__(self, service: str, node_id: str, runner: StatefulRunner, service_dir: Path, *, synchronous: bool = False) -> None:
        self.service = service
        self.node_id = node_id
        self.runner = runner
        self._dir = Path(service_dir)
        self._synchronous = synchronous
        self.claim = load_claim(self._dir)
        self.following: Endpoint | None = None
        self.fenced = False
        self._held_back = False
        self._sync_on = synchronous  # the engine's setting: as configured at start, then what this driver told it
        self._waits: dict[str, float] = {}  # step -> when it was first wanted; it waits for a majority heard since

    @property
    def waits_for_majority(self) -> bool:
        """A promotion, or dropping synchronous commit, waits for a fresh majority (the manager pings the members meanwhile)."""
        return bool(self._waits)

    async def apply(
        self,
        roles: Roles,
        endpoints: Mapping[str, Endpoint],
        *,
        quorum: bool = True,
        now: float = 0.0,
        heard_since: Callable[[float], bool] | None = None,
    ) -> bool:
        """Move the local copy to its role in ``roles``; True when ``claim`` changed (gossip it).

        ``quorum`` False: this side of the pool has no majority (module docstring, fencing).
        ``heard_since(t)``: whether a majority of the pool was heard from
        first-hand since ``t`` (on the clock of ``now``); None: no need to ask
        (no fencing, or a test).
        """
        before = self.claim
        if roles.primary == self.node_id and not quorum:
            if self.runner.role == "primary" and self.following is None:
                await self._fence(True, roles)
            elif not self._held_back:
                self._held_back = True
                log.warning(
                    "node %s: %s would be promoted at epoch %d, but this side of the pool has no majority: "
                    "it stays a replica until the majority is back (fencing)", self.node_id, self.service, roles.epoch,
                )  # fmt: skip
            return False
        self._held_back = False
        if roles.primary == self.node_id and not self._may_promote(now, heard_since):
            return False
        if roles.primary == self.node_id:
            await self._fence(False, roles)
            if self.runner.role != "primary" or self.following is not None:
                log.info("node %s: %s primary at epoch %d%s", self.node_id, self.service, roles.epoch, " (promoted)" if roles.promoted else "")
            await self.runner.set_role("primary", None)
            self.following = None
            await self._synchronous_commit(roles, now, heard_since)
            self._set_claim(Claim(roles.epoch, True))
        elif roles.primary is not None:
            target = endpoints.get(roles.primary)
            if target is None:
                return False  # the primary's address is not in the view yet
            if target != self.following:
                log.info("node %s: %s follows %s (%s) at epoch %d", self.node_id, self.service, roles.primary, target, roles.epoch)
                if before.primary and roles.epoch > before.epoch and self.runner.port is not None:
                    await self._report_discarded(before, roles)
            await self.runner.set_role("replica", target)
            await self._fence(False, roles)
            self.following = target
            if self.runner.port is not None:
                state = await self.runner.replication()
                if state.role == "replica" and state.linked:
                    self._set_claim(Claim(roles.epoch, False))
                elif before.primary:
                    # No longer primary, whatever happens next: never claim it again for that epoch.
                    self._set_claim(Claim(before.epoch, False))
        return self.claim != before

    def _heard_majority(self, step: str, wanted: bool, now: float, heard_since: Callable[[float], bool] | None) -> bool:
        """Whether ``step`` may happen now: not ``wanted`` as a guarded step, or a majority answered since it first was.

        ``step`` names the step in the logs ("promoted", "commits no longer wait for a standby").
        """
        if not wanted or heard_since is None:
            self._waits.pop(step, None)
            return True
        if step not in self._waits:
            self._waits[step] = now
            log.info(
                "node %s: %s: %s once a majority of the pool answers first-hand (a copy cut off from the pool "
                "sees the other copy dead before it suspects the rest)", self.node_id, self.service, step,
            )  # fmt: skip
        since = self._waits[step]
        if not heard_since(since):
            return False
        log.info("node %s: %s: a majority answered %.1f s later: %s", self.node_id, self.service, now - since, step)
        del self._waits[step]
        return True

    def _may_promote(self, now: float, heard_since: Callable[[float], bool] | None) -> bool:
        """A running replica chosen as primary is promoted once a majority answered since it was chosen (module docstring)."""
        promoting = self.runner.port is not None and (self.runner.role != "primary" or self.following is not None)
        return self._heard_majority("promoted", promoting, now, heard_since)

    async def _synchronous_commit(self, roles: Roles, now: float, heard_since: Callable[[float], bool] | None) -> None:
        """Commits wait for a standby while one is in the view; drop that only with a fresh majority (module docstring)."""
        set_sync = getattr(self.runner, "set_synchronous", None)
        if set_sync is None or self.runner.port is None:
            return
        want = self._synchronous and bool(roles.replicas)
        if not self._heard_majority("commits no longer wait for a standby", not want and self._sync_on, now, heard_since):
            return
        await set_sync(want)
        self._sync_on = want

    async def _fence(self, fenced: bool, roles: Roles) -> None:
        set_fenced = getattr(self.runner, "set_fenced", None)
        if fenced == self.fenced or set_fenced is None or self.runner.port is None:
            return
        await set_fenced(fenced)
        self.fenced = fenced
        if fenced:
            log.warning(
                "node %s: %s fenced: this side of the pool has no majority, so the primary of epoch %d refuses writes "
                "(the other side may promote; writes taken here since the split would be discarded)",
                self.node_id, self.service, self.claim.epoch,
            )  # fmt: skip
        else:
            log.info("node %s: %s fence lifted: the majority is back (epoch %d)", self.node_id, self.service, roles.epoch)

    async def _report_discarded(self, before: Claim, roles: Roles) -> None:
        """Say, before following a newer primary, that this old primary's own writes since the split are dropped."""
        try:
            position = (await self.runner.replication()).offset
        except Exception as exc:  # noqa: BLE001 - the report must not stop the demotion
            position = -1
            log.debug("node %s: %s: no replication position: %s", self.node_id, self.service, exc)
        log.warning(
            "node %s: %s was primary at epoch %d but %s was promoted at epoch %d meanwhile (a partition or a missed "
            "failover): writes this copy took that %s does not have are discarded as it follows it "
            "(this copy's replication position was %d%s)",
            self.node_id, self.service, before.epoch, roles.primary, roles.epoch, roles.primary, position,
            ", fenced" if self.fenced else "",
        )  # fmt: skip

    def abdicate(self) -> None:
        """No longer primary (a graceful hand-over): keep the epoch of the data, drop the primary claim."""
        self._set_claim(Claim(self.claim.epoch, False))

    def _set_claim(self, claim: Claim) -> None:
        if claim == self.claim:
            return
        self.claim = claim
        self._dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._dir / STATE_FILE, (json.dumps(asdict(claim)) + "\n").encode(), mode=0o600)


def endpoints(service: str, members: Iterable[MemberView], me: str, own_host: str | None = None) -> dict[str, Endpoint]:
    """Where each up member's copy of ``service`` listens, as this node (``me``, its services on ``own_host``) reaches it."""
    return {
        at.member.node: Endpoint(at.host, at.service_port) for at in serving_members(members, service, me, own_host)
    }


async def converge(
    driver: ReplicaDriver | None,
    service: str,
    view: Iterable[NodeView],
    claims: Mapping[str, tuple[int, bool]],
    where: Mapping[str, Endpoint],
    proxy: ServiceProxy | None = None,
    *,
    quorum: bool = True,
    now: float = 0.0,
    heard_since: Callable[[float], bool] | None = None,
) -> Roles:
    """One step for ``service``: decide from the view, move the local copy (if any), retarget the proxy.

    ``claims`` are the other nodes' gossiped claims; this node's own comes
    from ``driver`` (it may be newer than what the view has heard), and its
    copy counts as running. Call it once before ``runner.start()`` (so the
    copy starts in its role) and then on every view change and tick.

    At bootstrap two fresh nodes that do not see each other's copy yet can
    both start as primary of epoch 1; once each sees the other, the rank
    decides and the other becomes its replica (its empty-start writes, if
    any client reached it, are dropped). A node with data only acts after
    its view is settled (the manager's ``wait_settled``).
    """
    claims = dict(claims)
    found = copies(service, view, claims)
    if driver is not None:
        # This node runs (or is about to start) its copy, whatever its gossip says yet, with its own claim.
        own = Copy(driver.node_id, alive=True, runs=True, epoch=driver.claim.epoch, primary=driver.claim.primary)
        found = [c for c in found if c.node_id != driver.node_id] + [own]
    roles = primary_of(service, found)
    if driver is not None:
        await driver.apply(roles, where, quorum=quorum, now=now, heard_since=heard_since)
    if proxy is not None:
        proxy.set_target(where.get(roles.primary) if roles.primary is not None else None)
    return roles
