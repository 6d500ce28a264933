"""The churn soak: real daemons, steady client load, SIGKILL and restart on a timer.

``python -m rmap2p soak`` starts N ``rmap2p join`` processes of mixed worker
types, each with its own data dir. Run as root where the network-namespace lab
works (:func:`rmap2p.netlab.netns_available`), each daemon gets a lab host of
its own: its own address on the lab bridge and the default ports (``--bind
<ip>:7946``, HTTP on ``<ip>:8080``). Otherwise, or with ``--loopback``, they
share 127.0.0.1 with a gossip and an HTTP port each. Once the pool has
settled, three loops run side by side for ``--duration`` seconds:

- the client sends a steady, open-loop mix of requests (embeddings, NER,
  document text) to the gateway of a random node that is up, and records
  status, latency and the serving node;
- the observer polls ``/api/admin/workers`` on every node that is up, once a
  second: status transitions per (observer, subject) give false suspicions
  and false deaths, each node's own row says what it really runs (coverage
  and services moved per failure);
- the chaos loop SIGKILLs a random node every ``--kill-every`` seconds and,
  ``--down`` seconds later, restarts it with the same data dir (same identity)
  joining through a node that is up.

In the lab, the root namespace has no route to the lab (by design, see
:mod:`rmap2p.netlab`), so the client and the observer run from one more lab
host (the last one), which runs no daemon: for the asyncio run the soak's main
thread enters that host's namespace (setns), so every HTTP connection it opens
starts there, and it returns to its own namespace afterwards. The daemons are
started with ``ip netns exec`` into their hosts; nothing is added to the root
namespace. ``--loss`` is then the lab's :meth:`~rmap2p.netlab.NetnsLab.set_loss`
on every daemon host (incoming).

Every child is started in its own session with a parent-death signal, killed
at the end (also on Ctrl-C or SIGTERM), the lab's namespaces deleted and the
temporary directory removed.
The figures are computed by :mod:`rmap2p.soak_report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmap2p.local_ports import free_port
from rmap2p.netlab import Host, NetnsLab, netns_available
from rmap2p.soak_report import Kill, Observation, Request, SoakRecord, summarize

log = logging.getLogger("rmap2p.soak")

# Mixed worker types in start order; the first is the seed every node joins through.
# Three GPU-type nodes from five on: the three GPU services (rag-embeddings among them) then run one per
# node and a survivor has a free slot for the service of a dead one (with two, the survivor fills its two
# slots with the priority-1 services and rag-embeddings waits for the restart: see simulations/SOAK.md).
# Two storage nodes and two edge nodes at eight: a storage or edge service has no host but a node of its
# own type, so with one storage node chromadb and redis wait for its restart whatever the protocol does.
# With these eight every edge, GPU and CPU service a kill takes is re-homed on a survivor (the dead
# member's services take a third slot: allocator/allocate.py, "orphan"); storage services are not orphans,
# so without replicas (echo services) a storage node's kill may leave postgres, minio or neo4j to wait.
TYPE_CYCLE = ("edge", "gpu", "cpu", "gpu", "gpu", "storage", "storage", "edge")

REQUESTS: dict[str, tuple[str, bytes, str]] = {
    "rag-embeddings": ("/embed", b'{"texts": ["the tenant was evicted"]}', "application/json"),
    "ner-extraction": ("/extract", b'{"text": "Jane Doe lives in Leeds."}', "application/json"),
    "document-processing": ("/extract-text", b"soak document body", "application/octet-stream"),
    "notes-coa": ("/notes", b'{"case_text": "The tenant was evicted without notice."}', "application/json"),
}
"""service -> (path, body, content type) of its request in the mix. Echo servers answer any path."""
DEFAULT_MIX = ("rag-embeddings", "ner-extraction", "document-processing")
REAL_MIX = ("rag-embeddings", "ner-extraction")
"""With real engines: document-processing wants a PDF or DOCX upload and notes-coa an LLM, not in the soak yet."""

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
GOSSIP_PORT, HTTP_PORT = 7946, 8080
"""The daemons' default ports, which each lab host has to itself."""
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class SoakConfig:
    nodes: int = 8
    duration: float = 120.0
    kill_every: float = 30.0
    down: float = 10.0
    loss: float = 0.0
    seed: int = 1
    rate: float = 5.0
    real_services: bool = False
    types: tuple[str, ...] = TYPE_CYCLE
    """Worker types, cycled over the nodes."""
    mix: tuple[str, ...] = DEFAULT_MIX
    storage: bool = False
    """Storage nodes run the real redis-server (replicated), reached through --service-proxy; the pool gets a keyring."""
    storage_rate: float = 2.0
    request_timeout: float = 30.0
    """The client's patience per request: longer than the gateway's hold (RMAP2P_GATEWAY_HOLD, 15 s)."""
    settle_timeout: float = 120.0
    poll_interval: float = 1.0
    loopback: bool = False
    """Run on 127.0.0.1 even where the namespace lab would work."""
    progress: Callable[[str], None] | None = None


def _die_with_parent() -> None:
    # A soak that is itself SIGKILLed must not leave daemons behind.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Daemon:
    name: str
    worker_type: str
    data_dir: Path
    gossip_port: int
    http_port: int
    log_path: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proxy_port: int | None = None
    """Local port of this node's --service-proxy for redis (storage soak only)."""
    real: bool = False
    """Run real services here even when the pool runs echo servers (storage nodes of a storage soak)."""
    proc: subprocess.Popen[bytes] | None = None
    up: bool = False
    """Started, healthy, not killed since: the client and the chaos loop pick among these."""
    starts: int = 0
    host: Host | None = None
    """The lab host this daemon runs in (its own address, default ports); None on loopback."""

    @property
    def gossip(self) -> str:
        return f"{self.host.ip}:{GOSSIP_PORT}" if self.host else f"127.0.0.1:{self.gossip_port}"

    @property
    def http(self) -> str:
        return f"{self.host.ip}:{HTTP_PORT}" if self.host else f"127.0.0.1:{self.http_port}"

    def start(self, join: Sequence[str], echo: bool) -> None:
        argv = [
            sys.executable, "-m", "rmap2p", "join", "--bind", self.gossip,
            # In the lab no --http: the node serves on its --bind host, port 8080 (rmap2p/addresses.py).
            *([] if self.host else ["--http", self.http]), "--data-dir", str(self.data_dir),
            "--name", self.name, "--type", self.worker_type, "--no-mdns", "--profile", "local",
            "--ephemeral-service-ports", *(["--echo-services"] if echo and not self.real else []), *self.extra,
            *(["--service-proxy", f"redis={self.proxy_port}"] if self.proxy_port else []),
        ]
        for j in join:
            argv += ["--join", j]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for name in ("RMAP2P_JOIN", "RMAP2P_BIND", "RMAP2P_HTTP", "RMAP2P_DATA_DIR", "RMAP2P_ECHO_SERVICES"):
            env.pop(name, None)
        if self.host is not None:
            # As the lab does for its own commands: peers are reached directly, never through a proxy.
            env = {k: v for k, v in env.items() if k.lower() not in _PROXY_VARS}
            # `ip netns exec` execs the daemon in place: proc.pid is the daemon, as on loopback.
            argv = self.host.exec_argv(argv)
        self.starts += 1
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== start {self.starts}: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                argv, cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )

    def kill(self) -> None:
        self.up = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("soak: %s (pid %d) still there 10 s after SIGKILL", self.name, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class Soak:
    """One soak run. ``cleanup()`` is safe to call at any time, more than once."""

    def __init__(self, cfg: SoakConfig) -> None:
        if cfg.nodes < 2:
            raise ValueError("--nodes must be at least 2")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        # The victims have a generator of their own: the client draws from ``rng`` at a rate that depends
        # on timing, and the victim sequence must follow from the seed alone (the same kills on a re-run).
        self.chaos_rng = random.Random(f"{cfg.seed}/chaos")
        self.workdir = Path(tempfile.mkdtemp(prefix="rmap2p-soak-"))
        # Searchable by others: as root, PostgreSQL and Redis run as their own users and must reach their data
        # dirs below it (mkdtemp's 0700 kept postgres from starting at all; the node then stopped offering it).
        self.workdir.chmod(0o711)
        port_rng = random.Random()  # ports must not repeat between runs with the same seed
        self.daemons = [
            Daemon(
                name=f"{cfg.types[i % len(cfg.types)][0]}{i}",
                worker_type=cfg.types[i % len(cfg.types)],
                data_dir=self.workdir / f"n{i}",
                gossip_port=free_port(port_rng),
                http_port=free_port(port_rng),
                log_path=self.workdir / f"n{i}.log",
            )
            for i in range(cfg.nodes)
        ]
        for d in self.daemons:
            d.data_dir.mkdir(parents=True)
        self.token: str | None = None
        if cfg.storage:
            self._prepare_storage(port_rng)
        self.lab: NetnsLab | None = None
        self.client_host: Host | None = None
        self.transport, self.transport_why = _choose_transport(cfg)
        if self.transport == "netns":
            # One host per daemon, one more for the client and the observer (the root namespace cannot reach the lab).
            self.lab = NetnsLab(cfg.nodes + 1, log_dir=self.workdir / "lab")
            for d, h in zip(self.daemons, self.lab.hosts):
                d.host = h
            self.client_host = self.lab.hosts[-1]
        self.record = SoakRecord(
            nodes=[(d.name, d.worker_type) for d in self.daemons], config=_config_doc(cfg, self.transport),
        )
        self.loss_rules: list[list[str]] = []
        self.storage_acked: dict[str, tuple[str, bool]] = {}
        """key -> (value, a replica had it by WAIT 1) for every SET answered OK."""
        self._t0 = time.monotonic()
        self._stopping = False

    def _prepare_storage(self, port_rng: random.Random) -> None:
        """A keyring for the pool (the storage passwords derive from it) and a client token for the gateways."""
        if sum(d.worker_type == "storage" for d in self.daemons) < 2:
            raise ValueError("--storage needs at least two storage nodes (a primary and a replica); see --types")
        if shutil.which("redis-server") is None:
            raise ValueError("--storage needs redis-server on PATH")
        ring = self.workdir / "ring.json"
        cli = [sys.executable, "-m", "rmap2p"]
        subprocess.run([*cli, "keygen", "--key-file", str(ring)], check=True, capture_output=True, timeout=60)
        out = subprocess.run([*cli, "tokens", "create", "--key-file", str(ring), "--expires", "1d", "--json"],
                             check=True, capture_output=True, timeout=60, text=True).stdout
        self.token = json.loads(out)["token"]
        for i, d in enumerate(self.daemons):
            own = self.workdir / f"ring{i}.json"  # each node rewrites its own keyring file on rotation
            shutil.copy(ring, own)
            d.extra += ["--key-file", str(own)]
            if d.worker_type == "storage":
                d.real = True
            else:
                d.proxy_port = free_port(port_rng)

    # ------------------------------------------------------------ helpers

    def now(self) -> float:
        return time.monotonic() - self._t0

    def say(self, line: str) -> None:
        if self.cfg.progress is not None:
            self.cfg.progress(f"[soak {self.now():6.1f}s] {line}")

    def up(self) -> list[Daemon]:
        return [d for d in self.daemons if d.up]

    def mix(self) -> tuple[tuple[str, str, bytes, str], ...]:
        return tuple((s, *REQUESTS[s]) for s in self.cfg.mix)

    async def _get(self, session: Any, daemon: Daemon, path: str, timeout: float = 2.0) -> Any | None:
        import aiohttp

        try:
            async with session.get(f"http://{daemon.http}{path}", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    return None
                return await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return None

    async def _wait_healthy(self, session: Any, daemon: Daemon, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not daemon.running():
                return False
            doc = await self._get(session, daemon, "/health", timeout=1.0)
            if doc and doc.get("status") == "ok":
                return True
            await asyncio.sleep(0.2)
        return False

    # ------------------------------------------------------------ phases

    async def start_pool(self, session: Any) -> None:
        echo = not self.cfg.real_services
        seed = self.daemons[0]
        seed.start([], echo)
        if not await self._wait_healthy(session, seed, 60):
            raise RuntimeError(f"{seed.name} did not become healthy:\n{seed.tail()}")
        seed.up = True
        for d in self.daemons[1:]:
            d.start([seed.gossip], echo)
        for d in self.daemons[1:]:
            if not await self._wait_healthy(session, d, 60):
                raise RuntimeError(f"{d.name} did not become healthy:\n{d.tail()}")
            d.up = True
        self.say(f"{len(self.daemons)} daemons healthy ({', '.join(f'{d.name}:{d.worker_type}' for d in self.daemons)}); "
                 f"logs in {self.workdir}")
        await self._settle(session)

    async def _settle(self, session: Any) -> None:
        """Wait until every node sees every node alive and every service of the mix runs healthy."""
        wanted = {s for s, *_ in self.mix()} | ({"redis"} if self.cfg.storage else set())
        names = {d.name for d in self.daemons}
        deadline = time.monotonic() + self.cfg.settle_timeout
        while time.monotonic() < deadline:
            docs = await asyncio.gather(*(self._get(session, d, "/api/admin/workers") for d in self.daemons))
            if all(docs):
                views = [{w["name"]: w for w in doc["workers"]} for doc in docs]
                alive = all({n for n, w in v.items() if w["status"] == "alive"} >= names for v in views)
                served = {s for w in views[0].values() if w["status"] == "alive"
                          for s, h in w["services_status"].items() if h == "healthy"}
                if alive and wanted <= served:
                    self.say(f"pool settled: every view holds {len(names)} alive members; serving {', '.join(sorted(served))}")
                    return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the pool did not settle in {self.cfg.settle_timeout:.0f} s (every member alive everywhere, "
                           f"{', '.join(sorted(wanted))} healthy)")

    async def client(self, session: Any, until: float) -> None:
        import aiohttp

        mix = self.mix()
        period = 1.0 / self.cfg.rate
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout)
        in_flight: set[asyncio.Task[None]] = set()
        i = 0
        next_at = time.monotonic()
        while self.now() < until:
            service, path, body, ctype = mix[i % len(mix)]
            i += 1
            live = self.up()
            if live:
                entry = self.rng.choice(live)
                task = asyncio.create_task(self._one_request(session, timeout, entry, service, path, body, ctype))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                self.record.requests.append(Request(self.now(), service, "-", "no-live-node", 0.0, None))
            # Open loop: the schedule does not wait for answers, so slow answers do not lower the load.
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.cfg.request_timeout + 5)

    async def _one_request(self, session: Any, timeout: Any, entry: Daemon, service: str, path: str,
                           body: bytes, ctype: str) -> None:
        import aiohttp

        t = self.now()
        start = time.monotonic()
        outcome: str
        node: str | None = None
        try:
            async with session.post(f"http://{entry.http}/api/service/{service}{path}", data=body,
                                    headers=self._headers(ctype), timeout=timeout) as resp:
                raw = await resp.read()
                node = resp.headers.get("X-Rmap2p-Node")
                outcome = str(resp.status)
                if resp.status == 200 and not self._answer_ok(service, raw):
                    outcome = "200-wrong-body"
        except asyncio.TimeoutError:
            outcome = "timeout"
        except aiohttp.ClientConnectorError:
            outcome = "connect-error"
        except (aiohttp.ClientError, OSError) as exc:
            outcome = f"conn-{type(exc).__name__}"
        self.record.requests.append(Request(t, service, entry.name, outcome, time.monotonic() - start, node))

    def _headers(self, ctype: str) -> dict[str, str]:
        headers = {"Content-Type": ctype}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _answer_ok(self, service: str, raw: bytes) -> bool:
        try:
            doc = json.loads(raw)
        except ValueError:
            return False
        if self.cfg.real_services:
            # The field each real API answers with (see DESIGN.md, "Services").
            key = {"rag-embeddings": "embeddings", "ner-extraction": "entities"}.get(service, "text")
            return isinstance(doc, dict) and isinstance(doc.get(key), list | str)
        return isinstance(doc, dict) and doc.get("service") == service

    async def observer(self, session: Any, until: float) -> None:
        while self.now() < until:
            started = time.monotonic()
            targets = self.up()
            t = self.now()
            docs = await asyncio.gather(*(self._get(session, d, "/api/admin/workers") for d in targets))
            for d, doc in zip(targets, docs):
                if not doc:
                    continue
                rows = {w["name"]: (w["status"], {s: h for s, h in w["services_status"].items()}, w["incarnation"])
                        for w in doc["workers"]}
                self.record.observations.append(Observation(t, d.name, rows))
            await asyncio.sleep(max(0.05, self.cfg.poll_interval - (time.monotonic() - started)))

    async def chaos(self, session: Any, until: float) -> None:
        next_kill = self.now() + self.cfg.kill_every
        while True:
            await asyncio.sleep(max(0.0, next_kill - self.now()))
            if self.now() >= until:
                return
            next_kill += self.cfg.kill_every
            candidates = self.up()
            if len(candidates) < 2:
                self.say("chaos: fewer than two nodes up, no kill this round")
                continue
            victim = self.chaos_rng.choice(candidates)
            kill = Kill(node=victim.name, at=self.now())
            victim.kill()
            self.record.kills.append(kill)
            self.say(f"chaos: SIGKILL {victim.name} ({victim.worker_type}); restart in {self.cfg.down:.0f} s")
            await asyncio.sleep(self.cfg.down)
            if self._stopping:
                return
            via = [d.gossip for d in self.up()][:3]
            kill.restarted_at = self.now()
            victim.start(via, not self.cfg.real_services)
            if await self._wait_healthy(session, victim, 60):
                victim.up = True
                kill.healthy_at = self.now()
                self.say(f"chaos: {victim.name} back (same data dir), healthy after {kill.healthy_at - kill.restarted_at:.1f} s")
            else:
                self.say(f"chaos: {victim.name} did not come back healthy:\n{victim.tail()}")

    # ------------------------------------------------------------ storage round trips

    def _redis_password(self) -> str | None:
        for d in self.daemons:
            path = d.data_dir / "services" / "redis" / "password"
            if d.worker_type == "storage" and path.exists():
                return path.read_text().strip() or None
        return None

    async def _redis(self, port: int, *commands: tuple[Any, ...], timeout: float = 5.0) -> list[Any]:
        from services.runners.resp import RespClient

        client = await RespClient.connect("127.0.0.1", port, self._redis_password(), timeout=timeout)
        try:
            return list(await asyncio.wait_for(client.pipeline(commands), timeout))
        finally:
            await client.close()

    async def storage_client(self, until: float) -> None:
        """SET, WAIT 1 (a replica has it), GET through a random node's --service-proxy, at a steady rate."""
        st = self.record.storage
        period = 1.0 / self.cfg.storage_rate
        next_at = time.monotonic()
        i = 0
        while self.now() < until:
            proxies = [d for d in self.up() if d.proxy_port]
            if proxies:
                entry = self.rng.choice(proxies)
                key, value = f"soak:{i}", f"v{i}:{self.rng.random()}"
                i += 1
                st["writes"] += 1
                try:
                    # The request timeout (longer than the proxies' hold of a connection while the
                    # primary moves, 15 s) rather than 5 s: a client that gives up sooner counts
                    # the switch as a failure the proxy would have covered.
                    set_r, wait_r, get_r = await self._redis(entry.proxy_port, ("SET", key, value), ("WAIT", 1, 2000), ("GET", key),  # type: ignore[arg-type]
                                                             timeout=self.cfg.request_timeout)
                    if set_r != "OK":
                        st["failed"][f"SET {str(set_r)[:40]}"] = st["failed"].get(f"SET {str(set_r)[:40]}", 0) + 1
                    else:
                        st["acknowledged"] += 1
                        replicated = isinstance(wait_r, int) and wait_r >= 1
                        st["replicated"] += replicated
                        self.storage_acked[key] = (value, replicated)
                        if get_r != value.encode():
                            st["read_back_wrong"] += 1
                except (OSError, asyncio.TimeoutError, EOFError, ValueError) as exc:
                    kind = type(exc).__name__
                    st["failed"][kind] = st["failed"].get(kind, 0) + 1
                except Exception as exc:  # a RESP protocol or error reply: counted, the soak goes on
                    kind = f"{type(exc).__name__}: {str(exc)[:40]}"
                    st["failed"][kind] = st["failed"].get(kind, 0) + 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def storage_check(self) -> None:
        """After the churn: read every acknowledged write back through a proxy (retrying while redis fails over)."""
        st = self.record.storage
        keys = list(self.storage_acked)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proxies = [d for d in self.up() if d.proxy_port]
            if not proxies:
                await asyncio.sleep(1)
                continue
            try:
                replies = []
                for start in range(0, len(keys), 500):
                    replies += await self._redis(self.rng.choice(proxies).proxy_port,  # type: ignore[arg-type]
                                                 *[("GET", k) for k in keys[start:start + 500]], timeout=10)
            except Exception as exc:  # not there yet: a failover may still be under way
                st["final_read_errors"] = st.get("final_read_errors", 0) + 1
                log.info("soak: final read failed (%s), retrying", exc)
                await asyncio.sleep(1)
                continue
            lost = [k for k, r in zip(keys, replies) if r != self.storage_acked[k][0].encode()]
            st["acknowledged_lost"] = len(lost)
            st["replicated_lost"] = sum(self.storage_acked[k][1] for k in lost)
            st["lost_examples"] = lost[:10]
            return
        st["acknowledged_lost"] = None
        st["final_read"] = "no proxy answered within 60 s"

    async def progress(self, until: float) -> None:
        while self.now() < until:
            await asyncio.sleep(10.0)
            reqs = self.record.requests
            ok = sum(r.outcome == "200" for r in reqs)
            self.say(f"{len(reqs)} requests, {ok} answered, {len(reqs) - ok} failed; "
                     f"{len(self.up())}/{len(self.daemons)} nodes up; {len(self.record.kills)} kills")

    async def run(self) -> dict[str, Any]:
        import aiohttp

        self._install_loss()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, force_close=True)) as session:
            await self.start_pool(session)
            begin = self.now()
            until = begin + self.cfg.duration
            self.record.load_started = begin
            self.say(f"load: {self.cfg.rate:g} req/s for {self.cfg.duration:g} s; SIGKILL a random node every "
                     f"{self.cfg.kill_every:g} s, restart it {self.cfg.down:g} s later")
            chaos = asyncio.create_task(self.chaos(session, until))
            try:
                loops = [self.client(session, until), self.observer(session, until), self.progress(until)]
                if self.cfg.storage:
                    loops.append(self.storage_client(until))
                await asyncio.gather(*loops)
            finally:
                self._stopping = True
                chaos.cancel()
                await asyncio.gather(chaos, return_exceptions=True)
            self.record.load_ended = self.now()
            if self.cfg.storage:
                await self.storage_check()
        return summarize(self.record)

    # ------------------------------------------------------------ packet loss and cleanup

    def create_lab(self) -> None:
        if self.lab is None:
            return
        self.lab.create()
        self.say(f"network namespaces {self.lab.prefix}*: {', '.join(f'{d.name} at {d.host.ip}' for d in self.daemons if d.host)}; "
                 f"client at {self.client_host.ip if self.client_host else '-'}")

    @contextlib.contextmanager
    def in_client_namespace(self) -> Iterator[None]:
        """The calling thread in the lab's client host for the block (a no-op on loopback)."""
        if self.client_host is None:
            yield
            return
        with _netns(self.client_host.ns):
            yield

    def _install_loss(self) -> None:
        """Drop a share of the gossip datagrams on loopback with iptables (root only), for our ports alone.

        In the lab: every daemon host drops that share of what it receives on the lab link (the lab's
        ``set_loss``, direction in): gossip UDP and TCP, the client's requests and the peers' forwards alike.
        """
        if self.cfg.loss <= 0:
            return
        if self.lab is not None:
            for d in self.daemons:
                assert d.host is not None
                self.lab.set_loss(d.host, self.cfg.loss, "in")
            return
        if os.geteuid() != 0 or shutil.which("iptables") is None:
            raise RuntimeError("--loss on loopback needs root and iptables (it adds a statistic DROP rule per gossip port)")
        tag = f"rmap2p-soak-{os.getpid()}"
        for d in self.daemons:
            rule = ["INPUT", "-i", "lo", "-p", "udp", "--dport", str(d.gossip_port), "-m", "statistic", "--mode", "random",
                    "--probability", f"{self.cfg.loss:.4f}", "-m", "comment", "--comment", tag, "-j", "DROP"]
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True, timeout=10)
            self.loss_rules.append(rule)

    def cleanup(self) -> None:
        self._stopping = True
        for d in self.daemons:
            d.up = False
            if d.proc is not None and d.proc.poll() is None:
                try:
                    d.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for d in self.daemons:
            if d.proc is not None:
                try:
                    d.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.warning("soak: %s (pid %d) did not exit after SIGKILL", d.name, d.proc.pid)
        while self.loss_rules:
            rule = self.loss_rules.pop()
            subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=10)
        if self.lab is not None:
            try:
                self.lab.destroy()
            except Exception:  # the work dir still goes; sweep_stale finds what is left
                log.exception("soak: could not delete the lab's namespaces (%s)", self.lab.prefix)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _choose_transport(cfg: SoakConfig) -> tuple[str, str]:
    """("netns" or "loopback", why): the lab when root and the lab's own probe passes, unless told otherwise."""
    if cfg.loopback:
        return "loopback", "--loopback"
    if cfg.storage:
        # The storage client talks to each node's --service-proxy on that node's own 127.0.0.1.
        return "loopback", "--storage runs on loopback (the proxies listen on each node's own 127.0.0.1)"
    if os.geteuid() != 0:
        return "loopback", "not root"
    ok, why = netns_available()
    return ("netns", why) if ok else ("loopback", f"no network namespaces: {why}")


@contextlib.contextmanager
def _netns(ns: str) -> Iterator[None]:
    """Move the calling thread into network namespace ``ns`` (made by ``ip netns``) and back.

    Only the net namespace changes, for this thread: sockets it opens start there; files,
    processes and the mount namespace stay as they are.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    path = next((p for p in (f"/run/netns/{ns}", f"/var/run/netns/{ns}") if os.path.exists(p)), None)
    if path is None:
        raise RuntimeError(f"network namespace {ns} not found under /run/netns")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to this process's own network namespace: {os.strerror(err)}")
    finally:
        os.close(own)


def _config_doc(cfg: SoakConfig, transport: str = "loopback") -> dict[str, Any]:
    return {
        "nodes": cfg.nodes, "duration_s": cfg.duration, "kill_every_s": cfg.kill_every, "down_s": cfg.down,
        "loss": cfg.loss, "seed": cfg.seed, "rate": cfg.rate, "request_timeout_s": cfg.request_timeout, "mix": list(cfg.mix), "types": list(cfg.types),
        "services": "real" if cfg.real_services else "echo", "storage": cfg.storage, "transport": transport, "profile": "local",
    }


def run_soak(cfg: SoakConfig, keep_logs: Path | None = None) -> dict[str, Any]:
    """Run one soak and return its figures; every child is gone and the temp dir removed on return or raise."""
    soak = Soak(cfg)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    # A soak started in the background of a non-interactive shell inherits SIGINT ignored; Ctrl-C
    # or `kill -INT` must still stop it and clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        soak.say(f"work dir {soak.workdir}")
        soak.say(f"transport: {soak.transport} ({soak.transport_why})")
        soak.create_lab()
        with soak.in_client_namespace():
            return asyncio.run(soak.run())
    except KeyboardInterrupt:
        soak.say("interrupted: killing every daemon and removing the work dir")
        raise
    except BaseException:
        if keep_logs is None:
            for d in soak.daemons:
                sys.stderr.write(f"----- {d.name}\n{d.tail(15)}\n")
        raise
    finally:
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for d in soak.daemons:
                if d.log_path.exists():
                    shutil.copy(d.log_path, keep_logs / d.log_path.name)
        soak.cleanup()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def run(args: Any) -> int:
    """Entry point of ``rmap2p soak``."""
    from rmap2p.soak_report import render_text

    if args.real_services:
        missing = [v for v in ("RMAP2P_NER_MODEL",) if not os.environ.get(v)]
        if missing:
            sys.stderr.write(f"soak --real-services: set {', '.join(missing)} (a spaCy package name or model directory)\n")
            return 2
    types = tuple(t for t in (args.types or ",".join(TYPE_CYCLE)).split(",") if t)
    mix = tuple(m for m in (args.mix or ",".join(REAL_MIX if args.real_services else DEFAULT_MIX)).split(",") if m)
    bad = [t for t in types if t not in ("edge", "gpu", "cpu", "storage")] + [m for m in mix if m not in REQUESTS]
    if bad or not types or not mix:
        sys.stderr.write(f"soak: unknown worker type or service {bad}; types are edge, gpu, cpu, storage; "
                         f"services are {', '.join(REQUESTS)}\n")
        return 2
    cfg = SoakConfig(
        types=types, mix=mix, nodes=args.nodes, duration=args.duration, kill_every=args.kill_every, down=args.down, loss=args.loss,
        seed=args.seed, rate=args.rate, real_services=args.real_services, storage=args.storage, loopback=args.loopback,
        request_timeout=args.request_timeout or (60.0 if args.real_services else 30.0),
        progress=lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()),
    )
    try:
        figures = run_soak(cfg, Path(args.keep_logs) if args.keep_logs else None)
    except (RuntimeError, ValueError) as exc:
        sys.stderr.write(f"soak failed: {exc}\n")
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(render_text(figures))
    return 0
