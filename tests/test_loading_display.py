"""Model-load progress as the admin API and the dashboard show it (issue 12).

Two real ``Node`` daemons in one process (gossip on a ``MemoryNetwork``, HTTP
on loopback TCP). One of them announces in its metadata that it is loading
``llm-inference`` at 42 % (``NodeMeta.loading``, field 15, as its service
manager does while a runner reports progress); the other's
``/api/admin/workers``, ``/api/admin/services``, dashboard snapshot and the
page in a headless Chromium must show that figure on that member and under
that service, and nothing once the load is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from browser import Browser, chromium_or_skip
from test_daemon_memory import until
from test_reach_display import edge_and_member, http_of

from rmap2p.daemon import Node

LOADING = (("llm-inference", 42),)


@asynccontextmanager
async def loading_pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """An edge ``edge-a`` and a ``gpu-b`` whose metadata says it loads llm-inference at 42 %; a has seen it."""
    async with edge_and_member(tmp_path, "gpu-b") as (a, b):
        b.update_meta(lambda m: replace(m, loading=LOADING))
        await until(lambda: any(m.meta.loading == LOADING for m in a.members()), 20, "b's progress to reach a")
        yield a, b


async def get_json(http: aiohttp.ClientSession, node: Node, path: str) -> dict:  # type: ignore[type-arg]
    async with http.get(f"http://{http_of(node)}{path}") as resp:
        assert resp.status == 200, path
        return await resp.json()  # type: ignore[no-any-return]


async def test_a_member_loading_a_model_is_shown_with_its_progress(tmp_path: Path) -> None:
    async with loading_pair(tmp_path) as (a, b):
        b_id = b.machine.id  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http:
            workers = {w["name"]: w for w in (await get_json(http, a, "/api/admin/workers"))["workers"]}
            services = {s["name"]: s for s in (await get_json(http, a, "/api/admin/services"))["services"]}
            snap = await get_json(http, a, "/api/dashboard")
            rows = {r["name"]: r for r in snap["members"]}
            assert workers["gpu-b"]["loading"] == {"llm-inference": 42}
            assert workers["edge-a"]["loading"] == {}
            assert services["llm-inference"]["loading"] == [{"node_id": b_id, "progress": 42}]
            assert rows["gpu-b"]["loading"] == [{"service": "llm-inference", "progress": 42}]
            assert rows["edge-a"]["loading"] == []
            assert snap["loading"] == [
                {"service": "llm-inference", "nodes": [{"worker_id": b_id, "name": "gpu-b", "progress": 42}]}
            ]
            # Loaded: the figure goes away everywhere.
            b.update_meta(lambda m: replace(m, loading=()))
            await until(lambda: all(not m.meta.loading for m in a.members()), 20, "b done loading")
            services = {s["name"]: s for s in (await get_json(http, a, "/api/admin/services"))["services"]}
            assert services["llm-inference"]["loading"] == []
            # The snapshot may be up to SNAPSHOT_TTL old: poll it a bounded number of times.
            for _ in range(40):
                snap = await get_json(http, a, "/api/dashboard")
                if not snap["loading"]:
                    break
                await asyncio.sleep(0.1)
            assert snap["loading"] == []
            assert all(r["loading"] == [] for r in snap["members"])


MEMBER_LOADING_JS = (
    "Object.fromEntries([...document.querySelectorAll('[data-member]')].map(e => "
    "[e.dataset.name, [...e.querySelectorAll('.svc.loading')].map(c => c.textContent)]))"
)
SERVICE_LOADING_JS = "[...document.querySelectorAll('#loading li')].map(e => [e.dataset.service || '', e.textContent])"


@pytest.mark.slow
async def test_the_dashboard_page_shows_the_load_progress(tmp_path: Path) -> None:
    binary = chromium_or_skip()
    async with loading_pair(tmp_path) as (a, b):
        browser = await Browser.launch(tmp_path, binary)
        try:
            page = await browser.new_page()
            await page.goto(f"http://{http_of(a)}/")
            want = {"edge-a": [], "gpu-b": ["llm-inference 42 %"]}
            await page.wait_for(MEMBER_LOADING_JS, timeout=20, what="the progress on gpu-b's card", pred=lambda v: v == want)
            assert await page.evaluate(SERVICE_LOADING_JS) == [["llm-inference", "llm-inference: gpu-b 42 %"]]
            # Done loading: the page follows without a reload.
            b.update_meta(lambda m: replace(m, loading=()))
            await page.wait_for(
                SERVICE_LOADING_JS, timeout=20, what="no model loading",
                pred=lambda v: v == [["", "No model is loading."]],
            )
            assert await page.evaluate(MEMBER_LOADING_JS) == {"edge-a": [], "gpu-b": []}
        finally:
            await browser.close()
