"""Which services a node should keep warm: those the allocation would hand it if their one runner died.

A model service re-homed after a crash is served again only once the new
runner has loaded its model, seconds after failure detection already took
its share. The node that the allocation would pick next can load the model
beforehand (a *warm standby*: started, not advertised, not routed to) and
take the service over the moment the allocation gives it, with no load.

``standby_for(me, view)``: for each alive node that is the only runner of
some service, the allocation of the view with that node dead (its services
kept as the dead member's, as failure detection leaves them); the services
of that node which ``me`` would then run and does not run now. The same
``allocate`` the node will run after the death, so a standby is where the
service will go, unless something else changes first. Services with two
runners or more lose nothing to one death and get no standby.

Pure; the caller decides which services are worth a standby (those that load
a model) and owns the runners.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from allocator.allocate import allocate
from allocator.catalog import CATALOG, ServiceSpec
from allocator.view import NodeView, alive_members, normalize


def sole_runners(view: Sequence[NodeView]) -> dict[str, str]:
    """service -> the one alive node running it (services run by two or more, or none, are absent)."""
    runners: dict[str, list[str]] = {}
    for n in alive_members(normalize(view)):
        for s in n.services:
            runners.setdefault(s, []).append(n.node_id)
    return {s: nodes[0] for s, nodes in runners.items() if len(nodes) == 1}


def standby_for(
    me: str,
    view: Sequence[NodeView],
    services: Collection[str] | None = None,
    catalog: Sequence[ServiceSpec] = CATALOG,
) -> tuple[str, ...]:
    """The services (of ``services``; None: any) ``me`` would take over if their one runner died, sorted."""
    nodes = normalize(view)
    mine = next((n for n in nodes if n.node_id == me and n.is_alive), None)
    if mine is None:
        return ()
    by_runner: dict[str, list[str]] = {}
    for service, runner in sole_runners(nodes).items():
        if runner != me and service not in mine.services and (services is None or service in services):
            by_runner.setdefault(runner, []).append(service)
    wanted: set[str] = set()
    for runner, lost in by_runner.items():
        after = allocate([replace(n, status="dead") if n.node_id == runner else n for n in nodes], catalog)
        wanted.update(s for s in lost if s in after.get(me, ()))
    return tuple(sorted(wanted))
