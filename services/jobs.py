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

``rag_ingestion`` (``services.rag_ingestion``) is run by the worker side
itself: the broadcast names the workers it went to (``workers``), each takes
its share of the documents, and the answer adds each worker's ``result``
and the totals (``documents``, ``chunks_written``, ``failures``). Workers
that failed have their share redone by the others (``reassigned_from``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from allocator.catalog import CATALOG, by_name, tier_of
from allocator.members import node_view
from allocator.scoring import canonical_service
from allocator.view import NodeView
from membership import MemberView
from services import rag_ingestion
from services.handle import PoolHandle
from services.replication import endpoints
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
    """A broadcast job; ``capability`` is a catalog service name (aliases resolved) or None.

    ``workers``: the nodes the broadcast went to (set by the broadcasting
    node, for jobs whose workers split the work); ``redo`` and ``previous``:
    a second round that redoes the shares ``redo`` had among ``previous``.
    """

    job_type: str
    job_data: dict[str, Any]
    capability: str | None = None
    workers: tuple[str, ...] = ()
    redo: tuple[str, ...] = ()
    previous: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"job_type": self.job_type, "job_data": self.job_data, "required_capability": self.capability}
        for key in ("workers", "redo", "previous"):
            if getattr(self, key):
                doc[key] = list(getattr(self, key))
        return doc


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
    lists = {}
    for key in ("workers", "redo", "previous"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{key} must be a list of node ids")
        lists[key] = tuple(value)
    raw_cap = doc.get("required_capability")
    if raw_cap is None or raw_cap == "":
        if job_type == rag_ingestion.JOB_TYPE:
            rag_ingestion.parse_ingestion(job_data)
            return Job(job_type, job_data, rag_ingestion.CAPABILITY, **lists)
        return Job(job_type, job_data, **lists)
    if not isinstance(raw_cap, str):
        raise ValueError("required_capability must be a string (a service name or alias)")
    cap = canonical_service(raw_cap)
    if by_name(cap) is None:
        known = ", ".join(s.name for s in CATALOG)
        raise ValueError(f"unknown required_capability {raw_cap!r}; known services: {known}")
    if job_type == rag_ingestion.JOB_TYPE:
        if cap != rag_ingestion.CAPABILITY:
            raise ValueError(f"{job_type} needs required_capability {rag_ingestion.CAPABILITY!r} (or 'embeddings'), not {raw_cap!r}")
        rag_ingestion.parse_ingestion(job_data)
    return Job(job_type, job_data, cap, **lists)



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
        splits = job.job_type == rag_ingestion.JOB_TYPE
        if splits:
            job = replace(job, workers=tuple(t.node_id for t in targets))
        results = await self._fan_out(job, [t.node_id for t in targets], by_id)
        reassigned: list[str] = []
        if splits:
            failed = [n for n in job.workers if not _ok(results[n][0])]
            survivors = [n for n in job.workers if _ok(results[n][0])]
            if failed and survivors:
                # The failed workers' shares, spread over the survivors (services.rag_ingestion.share).
                log.warning("node %s: %s: workers %s failed; their documents go to %s", me, job.job_type, failed, survivors)
                again = replace(job, workers=tuple(survivors), redo=tuple(failed), previous=job.workers)
                second = await self._fan_out(again, survivors, by_id)
                for node, (code, doc) in second.items():
                    first_code, first_doc = results[node]
                    if _ok(code):
                        results[node] = (first_code, _merge(first_doc, doc))
                    else:
                        results[node] = (first_code, _note(first_doc, f"redoing the shares of {', '.join(failed)} failed: status {code}"))
                reassigned = failed
        workers = []
        for t in targets:
            code, doc = results.get(t.node_id, (None, None))
            entry: dict[str, Any] = {"worker_id": t.node_id, "status": "accepted" if _ok(code) else "failed", "status_code": code}
            if splits and isinstance(doc, dict) and isinstance(doc.get("result"), dict):
                entry["result"] = doc["result"]
            workers.append(entry)
        successful = sum(1 for w in workers if w["status"] == "accepted")
        log.info(
            "node %s: broadcast %s (capability %s) to %d nodes: %d accepted", me, job.job_type, job.capability or "tier<=2",
            len(targets), successful,
        )
        answer = {**shape, "successful": successful, "failed": len(targets) - successful, "workers": workers}
        if splits:
            answer.update(_totals(workers, reassigned))
        return web.json_response(answer)

    async def _fan_out(self, job: Job, targets: Sequence[str], by_id: dict[str, MemberView]) -> dict[str, tuple[int | None, Any]]:
        """``job`` to each of ``targets`` at once; node -> (status code or None, answer document or None)."""
        results: dict[str, tuple[int | None, Any]] = {}
        gate = asyncio.Semaphore(BROADCAST_CONCURRENCY)
        # One deadline for the whole fan-out, waiting for the gate included: a pool of thousands
        # answers within the timeout too, the slowest nodes counted as failed.
        deadline = asyncio.get_running_loop().time() + timeout_of(job)

        async def send(node: str) -> None:
            results[node] = await self._send_job(job, by_id[node], gate, deadline)

        async with asyncio.TaskGroup() as tg:
            for node in targets:
                tg.create_task(send(node))
        return results

    async def _send_job(self, job: Job, member: MemberView, gate: asyncio.Semaphore, deadline: float) -> tuple[int | None, Any]:
        """POST the job to one node's worker endpoint (in-process for this node); its status code (None: no answer) and answer."""
        me = self.node.node_id
        try:
            async with asyncio.timeout_at(deadline), gate:
                if member.node == me:
                    return await self._take_job(job)
                http = split_host_port(member.meta.http)
                if http is None:
                    log.warning(
                        "node %s: job %s -> node %s: no usable HTTP address %r", me, job.job_type, member.node, member.meta.http,
                    )
                    return None, None
                host = member.addr[0] if http[0] in WILDCARD_HOSTS else http[0]
                url = URL.build(scheme="http", host=host, port=http[1], path=WORKER_JOB_PATH)
                # Signed like a routed request: a peer's job post needs no client token.
                signed = sign_route_headers(self.node.identity, "POST", url.raw_path_qs, member.node, 1, time.time())
                # A worker's answer to a long job (ingestion) may come after the session's read timeout.
                patient = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_of(job))
                async with self._client().post(url, json=job.to_json(), headers={**_JSON, **signed}, timeout=patient) as resp:
                    raw = await resp.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = None
                log.debug(
                    "node %s: job %s (%s) -> node %s at %s: %d", me, job.job_type, job.capability or "tier<=2",
                    member.node, url.authority, resp.status,
                )
                return resp.status, answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "node %s: job %s (%s) -> node %s failed: %r", me, job.job_type, job.capability or "tier<=2", member.node, exc,
            )
            return None, None

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
        if job.job_type == rag_ingestion.JOB_TYPE:
            embed = URL.build(scheme="http", host=connect_host(http[0] if http else "127.0.0.1"), port=port, path="/embed")
            return await self._ingest(job, str(embed))
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


    async def _ingest(self, job: Job, embed_url: str) -> tuple[int, dict[str, Any]]:
        """This node's share of a ``rag_ingestion`` job, written to the pool's ChromaDB."""
        me = self.node.node_id
        try:
            ingestion = rag_ingestion.parse_ingestion(job.job_data)
        except ValueError as exc:
            return 400, {"error": str(exc), "worker_id": me}
        workers = job.workers or (me,)
        if me not in workers:
            return 409, {"error": f"node {me} is not among this job's workers", "worker_id": me}
        docs = rag_ingestion.share(ingestion, workers, me, job.redo, job.previous)
        store = chroma_endpoint(self.node.members(), me, self.node.service_host)
        if store is None:
            return 503, {"error": "no node serves chromadb healthy", "worker_id": me}
        self.node.requests.begin()
        try:
            result = await rag_ingestion.ingest(self._client(), docs, ingestion, embed_url, f"http://{store}")
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as exc:
            log.warning("node %s: %s into %s at %s failed: %r", me, job.job_type, ingestion.collection, store, exc)
            return 502, {"error": f"chromadb at {store}: {exc}", "worker_id": me}
        finally:
            self.node.requests.end()
        log.info(
            "node %s: %s: %d documents, %d chunks written to %s at %s, %d failures", me, job.job_type, result.documents,
            result.chunks_written, ingestion.collection, store, len(result.failures),
        )  # fmt: skip
        return 200, {"worker_id": me, "status": "accepted", "job_type": job.job_type, "result": result.to_json()}


def timeout_of(job: Job) -> float:
    return rag_ingestion.INGESTION_TIMEOUT if job.job_type == rag_ingestion.JOB_TYPE else BROADCAST_TIMEOUT


def chroma_endpoint(members: Sequence[MemberView], me: str, own_host: str | None = None) -> str | None:
    """host:port of a healthy chromadb copy in the view (lowest node id), or None."""
    where = endpoints(rag_ingestion.STORE, members, me, own_host)
    for m in sorted(members, key=lambda m: m.node):
        if m.node in where and rag_ingestion.STORE in m.meta.healthy_services:
            return str(where[m.node])
    return None


def _ok(code: int | None) -> bool:
    return code is not None and 200 <= code < 300


def _merge(first: Any, second: Any) -> Any:
    """A worker's two answers (its share, then its part of the failed workers' shares) as one."""
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return second
    a, b = first.get("result"), second.get("result")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return second
    merged = {k: a.get(k, 0) + b.get(k, 0) for k in ("documents", "chunks_written")}
    merged["failures"] = list(a.get("failures", [])) + list(b.get("failures", []))
    return {**second, "result": merged}


def _note(answer: Any, failure: str) -> Any:
    """``answer`` with one more entry in its result's failures."""
    if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
        result = answer["result"]
        return {**answer, "result": {**result, "failures": [*result.get("failures", []), failure]}}
    return answer


def _totals(workers: Sequence[dict[str, Any]], reassigned: Sequence[str]) -> dict[str, Any]:
    results = [w["result"] for w in workers if isinstance(w.get("result"), dict)]
    return {
        "documents": sum(int(r.get("documents", 0)) for r in results),
        "chunks_written": sum(int(r.get("chunks_written", 0)) for r in results),
        "failures": [f"{w['worker_id']}: {f}" for w in workers if isinstance(w.get("result"), dict) for f in w["result"].get("failures", [])],
        "reassigned_from": list(reassigned),
    }


async def _read_job(request: web.Request) -> Job | web.Response:
    try:
        doc = await request.json()
    except ValueError as exc:
        return json_error(400, f"body is not JSON: {exc}")
    try:
        return parse_job(doc)
    except ValueError as exc:
        return json_error(400, str(exc))
