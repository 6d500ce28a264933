"""Job broadcast (seed 003): one job fanned out to every capable node, the answers aggregated.

Job broadcast
-------------
``POST /api/coordinator/broadcast-job`` fans a job out, concurrently and
with a bounded timeout, to every capable alive node's
``POST /api/worker/job`` (served by this module on every node). Capable: the
node runs ``required_capability`` (name or alias) and reports it healthy;
with no capability named, every GPU or CPU node (tier ≤ 2, seed 003). A
worker hands a job with a capability to its local service as
``POST /jobs`` with the job as JSON; a job without one is accepted and
logged (no generic job runner exists yet). The answer has the seed's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from allocator.catalog import CATALOG, by_name, tier_of
from allocator.members import node_view
from allocator.scoring import canonical_service
from allocator.view import NodeView
from membership import MemberView
from services.handle import PoolHandle
from services.responses import json_error
from services.route_auth import sign_route_headers
from services.routing import WILDCARD_HOSTS, connect_host, split_host_port

log = logging.getLogger(__name__)

BROADCAST_TIMEOUT = 10.0
BROADCAST_CONCURRENCY = 64
WORKER_JOB_PATH = "/api/worker/job"
SERVICE_JOB_PATH = "/jobs"
MAX_JOB_TYPE = 200
_JSON = {"Content-Type": "application/json"}  # the gateway's session skips automatic Content-Type


@dataclass(frozen=True, slots=True)
class Job:
    """A broadcast job; ``capability`` is a catalog service name (aliases resolved) or None."""

    job_type: str
    job_data: dict[str, Any]
    capability: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job_type": self.job_type, "job_data": self.job_data, "required_capability": self.capability}


def parse_job(doc: object) -> Job:
    """A ``{"job_type", "job_data", "required_capability"?}`` document; ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError('expected a JSON object {"job_type": str, "job_data": object, "required_capability"?: str}')
    job_type = doc.get("job_type")
    if not isinstance(job_type, str) or not job_type.strip():
        raise ValueError("job_type must be a non-empty string")
    if len(job_type) > MAX_JOB_TYPE:
        raise ValueError(f"job_type must be at most {MAX_JOB_TYPE} characters")
    if "job_data" not in doc:
        raise ValueError("job_data is required (a JSON object)")
    job_data = doc["job_data"]
    if not isinstance(job_data, dict):
        raise ValueError("job_data must be a JSON object")
    raw_cap = doc.get("required_capability")
    if raw_cap is None or raw_cap == "":
        return Job(job_type, job_data)
    if not isinstance(raw_cap, str):
        raise ValueError("required_capability must be a string (a service name or alias)")
    cap = canonical_service(raw_cap)
    if by_name(cap) is None:
        known = ", ".join(s.name for s in CATALOG)
        raise ValueError(f"unknown required_capability {raw_cap!r}; known services: {known}")
    return Job(job_type, job_data, cap)



def capable(views: Iterable[NodeView], capability: str | None) -> list[NodeView]:
    """The alive nodes a job goes to, by node id: running ``capability`` healthy, or GPU/CPU nodes when None."""
    if capability is None:
        chosen = (v for v in views if v.is_alive and tier_of(v.worker_type) <= 2)
    else:
        chosen = (v for v in views if v.is_alive and capability in v.healthy_services)
    return sorted(chosen, key=lambda v: v.node_id)


class JobDesk:
    """This node's side of job broadcast: fan a job out, and take one handed to it."""

    def __init__(self, node: PoolHandle, client: Callable[[], aiohttp.ClientSession]) -> None:
        self.node = node
        self._client = client

    async def handle_broadcast(self, request: web.Request) -> web.Response:
        me = self.node.node_id
        job = await _read_job(request)
        if isinstance(job, web.Response):
            return job
        members = self.node.members()
        by_id = {m.node: m for m in members}
        targets = capable((node_view(m) for m in members), job.capability)
        shape: dict[str, Any] = {"job_type": job.job_type, "broadcasted_to": len(targets)}
        if not targets:
            what = f"running {job.capability} healthy" if job.capability else "of GPU or CPU tier"
            log.warning("node %s: broadcast %s: no alive node %s", me, job.job_type, what)
            return web.json_response(
                {"error": f"no alive node {what}", **shape, "successful": 0, "failed": 0, "workers": []}, status=503
            )
        results: dict[str, int | None] = {}
        gate = asyncio.Semaphore(BROADCAST_CONCURRENCY)
        # One deadline for the whole fan-out, waiting for the gate included: a pool of thousands
        # answers within BROADCAST_TIMEOUT too, the slowest nodes counted as failed.
        deadline = asyncio.get_running_loop().time() + BROADCAST_TIMEOUT

        async def send(node: str) -> None:
            results[node] = await self._send_job(job, by_id[node], gate, deadline)

        async with asyncio.TaskGroup() as tg:
            for t in targets:
                tg.create_task(send(t.node_id))
        workers = []
        for t in targets:
            code = results.get(t.node_id)
            ok = code is not None and 200 <= code < 300
            workers.append({"worker_id": t.node_id, "status": "accepted" if ok else "failed", "status_code": code})
        successful = sum(1 for w in workers if w["status"] == "accepted")
        log.info(
            "node %s: broadcast %s (capability %s) to %d nodes: %d accepted", me, job.job_type, job.capability or "tier<=2",
            len(targets), successful,
        )
        return web.json_response({**shape, "successful": successful, "failed": len(targets) - successful, "workers": workers})

    async def _send_job(self, job: Job, member: MemberView, gate: asyncio.Semaphore, deadline: float) -> int | None:
        """POST the job to one node's worker endpoint (in-process for this node); its status code, or None."""
        me = self.node.node_id
        try:
            async with asyncio.timeout_at(deadline), gate:
                if member.node == me:
                    status, _ = await self._take_job(job)
                    return status
                http = split_host_port(member.meta.http)
                if http is None:
                    log.warning(
                        "node %s: job %s -> node %s: no usable HTTP address %r", me, job.job_type, member.node, member.meta.http,
                    )
                    return None
                host = member.addr[0] if http[0] in WILDCARD_HOSTS else http[0]
                url = URL.build(scheme="http", host=host, port=http[1], path=WORKER_JOB_PATH)
                # Signed like a routed request: a peer's job post needs no client token.
                signed = sign_route_headers(self.node.identity, "POST", url.raw_path_qs, member.node, 1, time.time())
                async with self._client().post(url, json=job.to_json(), headers={**_JSON, **signed}) as resp:
                    await resp.read()
                log.debug(
                    "node %s: job %s (%s) -> node %s at %s: %d", me, job.job_type, job.capability or "tier<=2",
                    member.node, url.authority, resp.status,
                )
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "node %s: job %s (%s) -> node %s failed: %r", me, job.job_type, job.capability or "tier<=2", member.node, exc,
            )
            return None

    async def handle_job(self, request: web.Request) -> web.Response:
        job = await _read_job(request)
        if isinstance(job, web.Response):
            return job
        status, doc = await self._take_job(job)
        return web.json_response(doc, status=status)

    async def _take_job(self, job: Job) -> tuple[int, dict[str, Any]]:
        """This node's answer to a broadcast job: hand it to the local service, or accept it."""
        me = self.node.node_id
        meta = self.node.meta
        if job.capability is None:
            tier = tier_of(meta.worker_type)
            if tier > 2:
                why = f"a {meta.worker_type} node (tier {tier}) takes only jobs naming a service it runs"
                return 409, {"error": why, "worker_id": me}
            log.info("node %s: accepted job %s (no capability named; recorded, no job runner yet)", me, job.job_type)
            return 200, {"worker_id": me, "status": "accepted", "job_type": job.job_type}
        service = job.capability
        port = meta.port_of(service)
        http = split_host_port(meta.http)
        if service not in meta.healthy_services or port is None:
            return 409, {"error": f"{service} does not run healthy on node {me}", "worker_id": me}
        url = URL.build(scheme="http", host=connect_host(http[0] if http else "127.0.0.1"), port=port, path=SERVICE_JOB_PATH)
        self.node.requests.begin()
        try:
            async with asyncio.timeout(BROADCAST_TIMEOUT):
                async with self._client().post(url, json=job.to_json(), headers=_JSON) as resp:
                    await resp.read()
                    code = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("node %s: job %s -> %s on node %s at %s failed: %r", me, job.job_type, service, me, url.authority, exc)
            return 502, {"error": f"{service} on node {me} failed: {type(exc).__name__}", "worker_id": me}
        finally:
            self.node.requests.end()
        log.info("node %s: job %s -> %s on node %s at %s: %d", me, job.job_type, service, me, url.authority, code)
        if 200 <= code < 300:
            return 200, {
                "worker_id": me, "status": "accepted", "job_type": job.job_type, "service": service, "service_status": code,
            }
        return 502, {"error": f"{service} answered {code}", "worker_id": me, "service_status": code}


async def _read_job(request: web.Request) -> Job | web.Response:
    try:
        doc = await request.json()
    except ValueError as exc:
        return json_error(400, f"body is not JSON: {exc}")
    try:
        return parse_job(doc)
    except ValueError as exc:
        return json_error(400, str(exc))
