"""The dashboard every node serves at ``/``: a static page that follows the pool live over SSE.

The page (``rmap2p/static/``: HTML, JS, CSS; no build step, no CDN, works
offline) opens ``GET /api/events``, a Server-Sent-Events stream on which this
node pushes one JSON *snapshot* of the pool as it sees it: at once, then
whenever the membership view changes (at most every ``MIN_PUSH_INTERVAL``)
and at least every ``PUSH_INTERVAL`` so that load and request rates move.
``GET /api/dashboard`` answers the same snapshot once, for scripts.

The snapshot is built from the node's own view with the functions behind the
admin API (``allocator.gaps``, ``allocator.leaders``), plus what only the
dashboard needs: each service's port and health per node, the gaps in plain
words (``gap_sentences``), and this node's request rates. Request rates of
*other* nodes are not gossiped (only their requests in flight are), so the
page shows requests per second for the node it is served by.

Bounded: at most ``MAX_SSE_CLIENTS`` open streams (more get 503); one
snapshot is built and encoded per view change or ``SNAPSHOT_TTL`` and shared
by every stream. The streams end when the app shuts down (``on_shutdown``),
so an open dashboard never holds up a node's leave.

Node names and everything else in the snapshot come from peers: the page
inserts them as text only (never as HTML) and is served with a CSP that
allows no inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from allocator.catalog import tier_of
from allocator.gaps import gaps
from allocator.leaders import elect
from allocator.members import to_node_views
from membership import MemberEvent, MemberView, Status
from p2p.discovery import format_host_port
from rmap2p.daemon import Node
from services.request_metrics import RequestMetrics, request_metrics

log = logging.getLogger(__name__)

MAX_SSE_CLIENTS = 32
PUSH_INTERVAL = 1.0
"""Seconds between snapshots when nothing changes (load and rates still move)."""
MIN_PUSH_INTERVAL = 0.2
"""A burst of view changes is sent as one snapshot per this many seconds."""
SNAPSHOT_TTL = 0.5
RATE_WINDOW = 10.0
"""Requests per second are averaged over this many seconds."""

STATIC_FILES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

TYPE_WORDS = {"gpu": "GPU", "cpu": "CPU", "storage": "storage", "edge": "edge"}


# ------------------------------------------------------------ pure documents


def gap_sentences(gaps_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The services that need workers, in plain words, most urgent first.

    ``critical`` (no worker): "needs 1 more GPU worker for llm-inference";
    ``warning`` (one worker, no spare): "needs 1 more GPU worker for
    llm-inference to have a spare". ``ok`` services are left out. Each entry
    keeps ``service``, ``status`` and ``required_type`` beside ``text``.
    """
    out = []
    for entry in gaps_doc.get("gaps", []):
        status = entry.get("status")
        if status not in ("critical", "warning"):
            continue
        kind = TYPE_WORDS.get(entry.get("required_type", ""), str(entry.get("required_type", "")))
        text = f"needs 1 more {kind} worker for {entry['service']}"
        if status == "warning":
            text += " to have a spare"
        out.append({"service": entry["service"], "status": status, "required_type": entry.get("required_type"), "text": text})
    return out


def gap_headline(gaps_doc: dict[str, Any]) -> str:
    """One line for the top of the page: how many services have no worker (by worker type), or no spare."""
    entries = gaps_doc.get("gaps", [])
    critical = [e for e in entries if e.get("status") == "critical"]
    warning = [e for e in entries if e.get("status") == "warning"]
    if not critical and not warning:
        return f"All {len(entries)} services run on at least two nodes."
    parts = []
    if critical:
        by_type: dict[str, int] = {}
        for e in critical:
            kind = TYPE_WORDS.get(e.get("required_type", ""), str(e.get("required_type", "")))
            by_type[kind] = by_type.get(kind, 0) + 1
        detail = ", ".join(f"{kind}: {n}" for kind, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
        parts.append(f"{len(critical)} of {len(entries)} services have no worker ({detail})")
    if warning:
        parts.append(f"{len(warning)} run{'s' if len(warning) == 1 else ''} on one node only")
    return "; ".join(parts) + "."


def member_row(m: MemberView, me: str, leaders: dict[str, Any], wall: float | None) -> dict[str, Any]:
    """One member as the page shows it (seed field names where the admin API has them)."""
    meta = m.meta
    host = meta.http.rsplit(":", 1)[0] if meta.http else ""
    health = dict(meta.services)
    services = []
    for name in meta.service_names:
        port = meta.port_of(name)
        endpoint = format_host_port(host.strip("[]"), port) if host and port else None
        services.append({"name": name, "health": health.get(name, ""), "port": port, "endpoint": endpoint})
    return {
        "worker_id": m.node,
        "name": meta.name or m.node,
        "status": m.status.label,
        "incarnation": m.incarnation,
        "worker_type": meta.worker_type,
        "tier": tier_of(meta.worker_type),
        "specialization": meta.specialization,
        "address": format_host_port(*m.addr),
        "http": meta.http,
        "reach": meta.reach,
        "relays": list(meta.relays),
        "services": services,
        "loaded_models": list(meta.loaded_models),
        "loading": [{"service": name, "progress": pct} for name, pct in meta.loading],
        "current_load": round(m.load.cpu_percent / 100.0, 3),
        "memory_percent": m.load.memory_percent,
        "gpu_utilization": float(m.load.gpu_utilization),
        "active_requests": m.load.active_requests,
        "self": m.node == me,
        "leader": m.node in leaders.get("coordinators", ()),
        "primary": m.node == leaders.get("primary"),
        "status_since": wall,
    }


def loading_by_service(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per service, the live members still loading its model and how far (from the ``member_row`` rows).

    ``[{"service", "nodes": [{"worker_id", "name", "progress"}]}]``, by service
    name, nodes as the rows come; dead and left members are left out (what
    they last reported is not going to finish).
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] in ("dead", "left"):
            continue
        for entry in row["loading"]:
            found.setdefault(entry["service"], []).append(
                {"worker_id": row["worker_id"], "name": row["name"], "progress": entry["progress"]}
            )
    return [{"service": service, "nodes": nodes} for service, nodes in sorted(found.items())]


def count_statuses(members: Iterable[MemberView]) -> dict[str, int]:
    counts = {s.label: 0 for s in Status}
    for m in members:
        counts[m.status.label] += 1
    return counts


# ------------------------------------------------------------ rates and the hub


class Rate:
    """Events per second of a monotonically growing count, over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque(maxlen=64)

    def update(self, now: float, count: int) -> float | None:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        if now - t0 < 0.5:
            return None
        return round((count - c0) / (now - t0), 2)


class DashboardHub:
    """The open live streams of one app and the snapshot they share."""

    def __init__(self, node: Node, requests: RequestMetrics) -> None:
        self.node = node
        self.requests = requests
        self.clients: set[asyncio.Event] = set()
        self.closing = False
        self._version = 0
        self._cached: tuple[int, float, bytes] | None = None
        self._served = Rate()
        self._forwarded = Rate()

    def on_view_change(self, events: Sequence[MemberEvent]) -> None:
        self._version += 1
        for wake in self.clients:
            wake.set()

    async def close(self, app: web.Application) -> None:
        """``on_shutdown``: end every stream so the runner's cleanup does not wait for them."""
        self.closing = True
        for wake in self.clients:
            wake.set()

    def snapshot(self) -> dict[str, Any]:
        node = self.node
        machine = node.machine
        if machine is None:
            return {"status": "starting"}
        now = time.monotonic()
        members = node.members()
        views = to_node_views(members)
        leaders = elect(views).to_json()
        gaps_doc = gaps(views)
        rows = [member_row(m, machine.id, leaders, node.wall_time(m.since)) for m in members]
        rows.sort(key=lambda r: (not r["self"], r["status"] != "alive", r["name"], r["worker_id"]))
        return {
            "status": "ok",
            "generated_at": time.time(),
            "node": {
                "worker_id": machine.id,
                "name": machine.meta.name,
                "worker_type": node.worker_type,
                "cluster": machine.cluster,
                "http": machine.meta.http,
                "uptime_s": round(node.uptime(), 1),
            },
            "counts": count_statuses(members),
            "members": rows,
            "leaders": leaders,
            "gaps": gaps_doc,
            "needs": gap_sentences(gaps_doc),
            "loading": loading_by_service(rows),
            "headline": gap_headline(gaps_doc),
            "requests": {
                "active": node.requests.active,
                "served": node.requests.served,
                "served_per_s": self._served.update(now, node.requests.served),
                "forwarded": self.requests.total(),
                "forwarded_per_s": self._forwarded.update(now, self.requests.total()),
            },
            "live_clients": len(self.clients),
        }

    def encoded(self) -> bytes:
        """The current snapshot as JSON, rebuilt on a view change or after ``SNAPSHOT_TTL``."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and cached[0] == self._version and now - cached[1] < SNAPSHOT_TTL:
            return cached[2]
        body = json.dumps(self.snapshot(), separators=(",", ":")).encode()
        self._cached = (self._version, now, body)
        return body


SSE_HUB: web.AppKey[DashboardHub] = web.AppKey("dashboard_hub", DashboardHub)


# ------------------------------------------------------------ handlers


def _load_static() -> dict[str, bytes]:
    root = resources.files("rmap2p").joinpath("static")
    return {name: root.joinpath(name).read_bytes() for name in STATIC_FILES}


def _static_handler(files: dict[str, bytes]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in files:
            return web.json_response({"error": f"no static file {name!r}"}, status=404)
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        return web.Response(body=files[name], content_type=STATIC_FILES[name], charset="utf-8", headers=headers)

    return handler


async def snapshot_json(request: web.Request) -> web.Response:
    hub = request.app[SSE_HUB]
    return web.Response(body=hub.encoded(), content_type="application/json")


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[SSE_HUB]
    if len(hub.clients) >= MAX_SSE_CLIENTS:
        return web.json_response(
            {"error": f"{MAX_SSE_CLIENTS} dashboards already follow this node; try another node or later"}, status=503
        )
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    wake = asyncio.Event()
    hub.clients.add(wake)
    try:
        # Tell the browser how soon to reconnect when this node goes away.
        await resp.write(b"retry: 2000\n\n")
        while not hub.closing:
            wake.clear()
            await resp.write(b"data: " + hub.encoded() + b"\n\n")
            await asyncio.sleep(MIN_PUSH_INTERVAL)
            if not wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), PUSH_INTERVAL - MIN_PUSH_INTERVAL)
    except ConnectionError:
        pass  # the browser went away (aiohttp's reset errors are ConnectionResetError)
    finally:
        hub.clients.discard(wake)
    return resp


def add_routes(app: web.Application, node: Node) -> None:
    """Serve the page at ``/`` and ``/dashboard``, its assets, and its live snapshot stream."""
    files = _load_static()
    hub = DashboardHub(node, request_metrics(app))
    app[SSE_HUB] = hub
    node.on_view_change(hub.on_view_change)
    app.on_shutdown.append(hub.close)
    page = _static_handler(files)
    app.router.add_get("/", page)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/static/{name}", page)
    app.router.add_get("/api/dashboard", snapshot_json)
    app.router.add_get("/api/events", events)
