"""The HTTP API every node serves (aiohttp): health, the admin views, key rotation, leave.

Field names follow the seeds (``worker_id``, ``status``, ``tier``,
``loaded_models``, ``current_load``, ...). Every document is computed from
the node's own membership view, so any node answers for the whole pool.

Who may call what is decided by the middlewares of rmap2p/http_guard.py
(route signatures, the coordinator's read-only views, client tokens and
rate limits, the operator token); the handlers here assume a caller that
got through. Key material never leaves the node: ``/api/admin/keys``
lists fingerprints (:func:`key_fingerprint`) and takes a key only in a
request body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from typing import Any

from aiohttp import web

from allocator.catalog import tier_of
from allocator.gaps import gaps, services_doc
from allocator.leaders import elect
from allocator.members import to_node_views
from allocator.view import NodeView
from membership import MemberView
from p2p.discovery import format_host_port
from p2p.keyring import KeyringError, decode_key
from rmap2p import dashboard, metrics  # dashboard at / and Prometheus /metrics (rmap2p/dashboard.py, rmap2p/metrics.py)
from rmap2p import operator
from rmap2p.daemon import Node
from rmap2p.http_guard import Guard, GuardedRunner, HttpPolicy
from rmap2p.pool_handle import NodeHandle
from services import gateway  # gateway hook: /api/service, broadcast-job, worker jobs
from services.load_progress import add_loading
from services.stateful_manager import add_endpoints

log = logging.getLogger(__name__)

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
GUARD_KEY: web.AppKey[Guard] = web.AppKey("guard", Guard)
FINGERPRINT_BYTES = 8


def pool_view(node: Node) -> list[NodeView]:
    return to_node_views(node.members())


def worker_doc(node: Node, m: MemberView) -> dict[str, Any]:
    meta = m.meta
    is_self = m.node == node.machine.id  # type: ignore[union-attr]
    last_seen = node.wall_time(node._now()) if is_self else node.wall_time(m.last_seen)
    return {
        "worker_id": m.node,
        "name": meta.name,
        "status": m.status.label,
        "incarnation": m.incarnation,
        "address": format_host_port(*m.addr),
        "http": meta.http,
        "worker_type": meta.worker_type,
        "tier": tier_of(meta.worker_type),
        "services": list(meta.service_names),
        "services_status": dict(meta.services),
        "capabilities": list(meta.capabilities),
        "loaded_models": list(meta.loaded_models),
        "loading": dict(meta.loading),
        "current_load": round(m.load.cpu_percent / 100.0, 3),
        "memory_percent": m.load.memory_percent,
        "gpu_utilization": float(m.load.gpu_utilization),
        "active_requests": m.load.active_requests,
        "specialization": meta.specialization,
        "edge_public": meta.edge_public,
        "reach": meta.reach,
        "relays": list(meta.relays),
        "relay": meta.relay,
        "last_seen": last_seen,
        "status_since": node.wall_time(m.since),
        "self": is_self,
    }


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    machine = node.machine
    if machine is None:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "node_id": machine.id,
            "name": machine.meta.name,
            "worker_type": node.worker_type,
            "incarnation": machine.incarnation,
            "cluster": machine.cluster,
            "members_alive": machine.num_active(),
            "members_known": machine.known(),
            "gossip": format_host_port(*machine.addr),
            "uptime_s": round(node.uptime(), 1),
            "reachability": node.reach.to_json(),
        }
    )


async def workers(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    docs = sorted((worker_doc(node, m) for m in node.members()), key=lambda d: (d["name"], d["worker_id"]))
    return web.json_response({"node_id": node.machine.id, "count": len(docs), "workers": docs})  # type: ignore[union-attr]


async def admin_gaps(request: web.Request) -> web.Response:
    return web.json_response(gaps(pool_view(request.app[NODE_KEY])))


async def admin_services(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    doc = services_doc(pool_view(node))
    own_host = (node.http_addr or node.config.http or ("", 0))[0]
    add_endpoints(doc, node.members(), node.machine.id if node.machine else "", own_host)  # stateful services: where, role, health
    add_loading(doc, node.members())  # models still loading: which node, how far
    return web.json_response(doc)


async def admin_leaders(request: web.Request) -> web.Response:
    return web.json_response(elect(pool_view(request.app[NODE_KEY])).to_json())


async def admin_stats(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    machine = node.machine
    stats = dataclasses.asdict(machine.stats) if machine is not None else {}
    return web.json_response(
        {
            "membership": stats,
            "awareness": machine.awareness.score if machine else None,
            "dropped_outbound": node.dropped_outbound,
            "udp": node.udp_stats(),
            "tcp": node.tcp_stats(),
            "http": request.app[GUARD_KEY].stats.to_json(),
        }
    )


async def admin_leave(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    node.stop("leave requested over HTTP")
    return web.json_response({"status": "leaving", "node_id": node.machine.id if node.machine else None})


def key_fingerprint(key: bytes) -> str:
    """First 8 bytes of the key's SHA-256, hex: names a key without revealing it.

    Its first 8 characters are p2p.keyring.fingerprint(key), the label in logs.
    """
    return hashlib.sha256(bytes(key)).hexdigest()[: 2 * FINGERPRINT_BYTES]


def _keys_doc(node: Node) -> dict[str, Any]:
    ring = node.keyring
    if ring is None:
        return {"keys": [], "primary": None, "encrypted": False}
    primary = key_fingerprint(ring.primary)
    keys = [{"fingerprint": key_fingerprint(k), "primary": key_fingerprint(k) == primary} for k in ring.list()]
    return {"keys": keys, "primary": primary, "encrypted": True}


def _find_key(node: Node, body: dict[str, Any]) -> bytes:
    """The key a POST names: ``key`` (base64) or, for use and remove, an installed key's ``fingerprint`` (a prefix will do)."""
    if "key" in body:
        return decode_key(body["key"])
    prefix = body.get("fingerprint")
    if not isinstance(prefix, str) or not 4 <= len(prefix) <= 2 * FINGERPRINT_BYTES:
        raise KeyringError('expected "key" (base64) or "fingerprint" (4 to 16 hex characters)')
    assert node.keyring is not None
    found = [k for k in node.keyring.list() if key_fingerprint(k).startswith(prefix.lower())]
    if len(found) != 1:
        raise KeyringError(f"fingerprint {prefix!r} matches {len(found)} installed keys, not one")
    return found[0]


async def keys_get(request: web.Request) -> web.Response:
    return web.json_response(_keys_doc(request.app[NODE_KEY]))


async def keys_post(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if node.keyring is None:
        return web.json_response({"error": "this node runs without a keyring (start it with --key-file)"}, status=400)
    usage = 'expected {"action": "install"|"use"|"remove", "key": base64} or, for use and remove, {"fingerprint": hex}'
    body = await request.json()  # checked by http_guard's json_bodies middleware
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        return web.json_response({"error": usage}, status=400)
    action = body["action"]
    if action not in ("install", "use", "remove"):
        return web.json_response({"error": f"unknown action {action[:50]!r}; {usage}"}, status=400)
    if action == "install" and "key" not in body:
        return web.json_response({"error": "install needs the key itself (base64) in \"key\""}, status=400)
    try:
        key = _find_key(node, body)
        if action == "install":
            node.keyring.install(key)
        elif action == "use":
            node.keyring.use(key)
        else:
            node.keyring.remove(key)
        node.save_keyring()
    except (KeyringError, ValueError, OSError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    log.info("node %s: keyring %s %s done", node.machine.id if node.machine else "?", action, key_fingerprint(key))
    return web.json_response(_keys_doc(node))


def make_app(node: Node, policy: HttpPolicy | None = None, operator_token: str | None = None) -> web.Application:
    """The node's app. Without ``operator_token`` operator actions work from loopback only."""
    policy = policy or HttpPolicy()
    guard = Guard(node, policy, operator_token)
    app = web.Application(client_max_size=policy.max_body, middlewares=guard.middlewares)
    app[NODE_KEY] = node
    app[GUARD_KEY] = guard
    app.on_response_prepare.append(guard.on_response_prepare)
    app.router.add_get("/health", health)
    app.router.add_get("/api/admin/workers", workers)
    app.router.add_get("/api/admin/gaps", admin_gaps)
    app.router.add_get("/api/admin/services", admin_services)
    app.router.add_get("/api/admin/leaders", admin_leaders)
    app.router.add_get("/api/admin/stats", admin_stats)
    app.router.add_post("/api/admin/leave", admin_leave)
    app.router.add_get("/api/admin/keys", keys_get)
    app.router.add_post("/api/admin/keys", keys_post)
    gateway.add_routes(app, NodeHandle(node), hold=policy.gateway_hold)  # gateway hook: forwarding and job broadcast live in services/gateway.py
    dashboard.add_routes(app, node)  # GET /, /dashboard, /static/*, /api/dashboard, /api/events (SSE)
    metrics.add_routes(app, node)  # GET /metrics
    return app


async def serve(node: Node) -> None:
    """Run the HTTP server as one of the node's tasks; cleaned up when cancelled."""
    await node.ready.wait()
    me = node.machine.id if node.machine else "?"
    try:
        token: str | None = operator.ensure_token(node.config.data_dir)
    except OSError as exc:
        log.warning("node %s: cannot write the operator token (%s); operator actions only from loopback", me, exc)
        token = None
    # The daemon's composition root has no rate-limit or hold setting yet: the environment carries them.
    policy = HttpPolicy.from_env(os.environ)
    app = make_app(node, policy, token)
    if node.keyring is None:
        log.warning(
            "node %s: no keyring, so the HTTP API is open: anyone who reaches it may use the pool's services "
            "(start every node with --key-file to require client tokens from `rmap2p tokens create`)", me,
        )
    runner = GuardedRunner(app, app[GUARD_KEY].stats, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        host, port = node.config.http
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else (host, port)
        node.set_http_addr((host, bound[1]))
        log.info(
            "node %s: HTTP API on http://%s (operator token in %s; rate limit %s)", me, format_host_port(host, bound[1]),
            operator.token_path(node.config.data_dir), _describe(policy),
        )
        await _forever()
    finally:
        await runner.cleanup()


def _describe(policy: HttpPolicy) -> str:
    lim = policy.rate_limit
    return f"{lim.rate:g}/s, burst {lim.burst} per client" if lim.enabled else "off"


async def _forever() -> None:
    await asyncio.Event().wait()
