"""Direct or relayed: how ``/api/admin/workers``, ``rmap2p status`` and the dashboard show a member's reach.

Two real ``Node`` daemons in one process (gossip on a ``MemoryNetwork``, HTTP
and push-pull on loopback TCP). One of them announces in its metadata that an
edge carries it (``NodeMeta.relays``, field 14, as a relayed member does);
the other's admin API, dashboard snapshot and the ``status`` command run
against it must say "relayed" and name the edge, and "direct" for the rest.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from browser import Browser, chromium_or_skip
from test_daemon_memory import config, memory_factory, running, until

from p2p.transport import MemoryNetwork
from rmap2p import http_api
from rmap2p.cmd_admin import reach_text
from rmap2p.daemon import Node


def test_reach_text() -> None:
    names = {"e1": "edge-a", "v1": "home"}
    assert reach_text({"reach": "direct", "relays": []}, names) == "direct"
    assert reach_text({"reach": "relayed", "relays": ["e1", "e9"]}, names) == "via edge-a,e9"
    assert reach_text({}, names) == "direct"  # a node of the release before relays


def http_of(node: Node) -> str:
    assert node.http_addr is not None
    return f"{node.http_addr[0]}:{node.http_addr[1]}"


@asynccontextmanager
async def edge_and_member(tmp_path: Path, member: str) -> AsyncIterator[tuple[Node, Node]]:
    """An edge ``edge-a`` and a member named ``member`` joined to it, both serving HTTP; a sees b alive."""
    net = MemoryNetwork()
    a = Node(config(tmp_path, "edge-a", worker_type="edge"), transport_factory=memory_factory(net))
    b = Node(config(tmp_path, member, join=(a.config.bind,)), transport_factory=memory_factory(net))
    for n in (a, b):
        n.add_task(lambda n=n: http_api.serve(n))
    async with running([a, b]):
        await until(lambda: a.http_addr is not None and b.http_addr is not None, 10, "both HTTP servers")
        await until(lambda: len([m for m in a.members() if m.status.label == "alive"]) == 2, 20, "a to see b")
        yield a, b


@asynccontextmanager
async def relayed_pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """An edge ``edge-a`` and a member ``home`` whose metadata says edge-a carries it; both views agree."""
    async with edge_and_member(tmp_path, "home") as (a, b):
        a_id = a.machine.id  # type: ignore[union-attr]
        b.update_meta(lambda m: replace(m, relays=(a_id,)))
        await until(lambda: any(m.meta.relays == (a_id,) for m in a.members()), 20, "b's relays to reach a")
        yield a, b


async def test_a_relayed_member_is_shown_relayed_through_its_edge(tmp_path: Path) -> None:
    async with relayed_pair(tmp_path) as (a, b):
        a_id = a.machine.id  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{http_of(a)}/api/admin/workers") as resp:
                workers = {w["name"]: w for w in (await resp.json())["workers"]}
            async with http.get(f"http://{http_of(a)}/api/dashboard") as resp:
                rows = {r["name"]: r for r in (await resp.json())["members"]}
        assert (workers["home"]["reach"], workers["home"]["relays"]) == ("relayed", [a_id])
        assert (workers["edge-a"]["reach"], workers["edge-a"]["relays"]) == ("direct", [])
        assert (rows["home"]["reach"], rows["home"]["relays"]) == ("relayed", [a_id])
        assert rows["edge-a"]["reach"] == "direct"
        cp = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "rmap2p", "status", "--http", http_of(a)],
            capture_output=True, text=True, timeout=30,
        )
        assert cp.returncode == 0, cp.stderr
        lines = {line.split()[1]: line for line in cp.stdout.splitlines()[1:] if len(line.split()) > 2}
        assert "REACH" in cp.stdout.splitlines()[0]
        assert "via edge-a" in lines["home"] and "direct" in lines["edge-a"], cp.stdout
        # Back to direct (the member found it is reachable after all).
        b.update_meta(lambda m: replace(m, relays=()))
        await until(lambda: all(m.meta.reach == "direct" for m in a.members()), 20, "b direct again")


REACH_JS = (
    "Object.fromEntries([...document.querySelectorAll('[data-member]')].map(e => "
    "[e.dataset.name, [...e.querySelectorAll('dt')].find(t => t.textContent === 'reach')?.nextSibling?.textContent]))"
)


@pytest.mark.slow
async def test_the_dashboard_page_shows_the_relayed_member(tmp_path: Path) -> None:
    binary = chromium_or_skip()
    async with relayed_pair(tmp_path) as (a, _b):
        browser = await Browser.launch(tmp_path, binary)
        try:
            page = await browser.new_page()
            await page.goto(f"http://{http_of(a)}/")
            want = {"edge-a": "direct", "home": f"relayed via edge-a ({a.machine.id[:8]})"}  # type: ignore[union-attr]
            await page.wait_for(REACH_JS, timeout=20, what="reach rows on both cards", pred=lambda v: v == want)
            badge = "document.querySelector('[data-member][data-name=\"home\"] .badge.relayed')?.textContent"
            assert await page.evaluate(badge) == "relayed"
        finally:
            await browser.close()
