"""Redis: a supervised ``redis-server`` with its data under the node's data dir, primary or replica.

Layout of ``<data dir>/services/redis/``::

    password        the pool's Redis password (0600, services.credentials)
    redis.conf      written by the runner before every start (0600: holds the password)
    data/           RDB snapshot and the append-only file (appendonly yes, fsync every second)

Durability: every write is in the AOF, fsynced every second; a restart of
the node (SIGTERM) loses nothing, a crash of the machine at most the last
second. A client that must not lose a write to a crash waits for the
replica (``WAIT 1 <ms>``); a promoted replica holds every write so
acknowledged. One case is not covered: if redis-server alone crashes on a
primary whose node stays alive, the supervisor restarts it from its AOF
(possibly a second short) and the replica resynchronises from it, so the
last second can be lost even where ``WAIT`` acknowledged it (Redis's own
caveat; ``appendfsync always`` would close it at a large cost per write).

Roles: ``replicaof`` is in the config when the runner starts as a replica,
so the supervisor's restarts keep the role; ``set_role`` changes it live
(``REPLICAOF host port`` / ``REPLICAOF NO ONE``) and rewrites the config.
A replica that used to be primary does a full resync from the new primary:
its writes that never reached a replica are dropped, which is what keeps
one history (no split brain).

Privileges: when the daemon is root, redis-server runs as
``RMAP2P_REDIS_USER`` (default ``redis``, the user the Debian package
creates) and owns its ``data/`` and ``redis.conf``; where that user does not
exist it runs as root (Redis allows it; a warning says so).

Container: with ``docker_env`` the same server runs in the official image
(``services.runners.container_life``: host network, the service dir mounted
at its own path, stopped with the daemon through its attached stdin); the
config, roles and commands are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from p2p.identity import atomic_write
from services.runner import RunnerError
from services.runners.container_life import contained_argv, image_for
from services.runners.native import (
    NativeServerRunner,
    NativeSupervisor,
    RunAs,
    checked_primary,
    chown_tree,
    guarded_argv,
    pick_port,
    run_as,
    unreachable_ancestor,
)
from services.runners.resp import RespClient, RespError, parse_info
from services.stateful import Endpoint, ReplicationState, Role
from services.supervisor import RestartPolicy, connect_host

log = logging.getLogger(__name__)

SERVICE = "redis"
DEFAULT_PORT = 6379
BINARY = "redis-server"
USER_ENV = "RMAP2P_REDIS_USER"
DEFAULT_USER = "redis"
READY_TIMEOUT = 30.0


def find_binary() -> str | None:
    return shutil.which(BINARY)


FENCE_REPLICAS = 1_000_000
"""``min-replicas-to-write`` of a fenced primary: more good replicas than can exist, so every write gets NOREPLICAS."""


def render_config(*, host: str, port: int, data: Path, password: str, primary: Endpoint | None, fenced: bool = False) -> str:
    """redis.conf for one copy. Pure."""
    lines = [
        f"bind {host}",
        f"port {port}",
        # requirepass guards every connection; protected mode would refuse non-loopback clients besides.
        "protected-mode no",
        "daemonize no",
        'logfile ""',
        "loglevel notice",
        f'dir "{data}"',
        "dbfilename dump.rdb",
        "appendonly yes",
        "appendfsync everysec",
        "save 3600 1 300 100 60 10000",
        f"requirepass {password}",
        f"masterauth {password}",
        "replica-read-only yes",
        "replica-serve-stale-data yes",
        # A full resync streams the snapshot at once instead of waiting 5 s for more replicas.
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-diskless-load swapdb",
    ]
    if primary is not None:
        lines.append(f"replicaof {primary.host} {primary.port}")
    if fenced:
        lines += [f"min-replicas-to-write {FENCE_REPLICAS}", "min-replicas-max-lag 10"]
    return "\n".join(lines) + "\n"


class RedisRunner(NativeServerRunner):
    """One copy of ``redis``; see the module docstring."""

    def __init__(
        self,
        service_dir: Path,
        host: str,
        port: int,
        node_id: str,
        password: str,
        *,
        policy: RestartPolicy | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        binary: str | None = None,
        service: str = SERVICE,
        docker_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(service_dir, host, port, node_id, password, service=service, policy=policy, on_failed=on_failed)
        self._binary = binary or find_binary()
        self._docker_env = docker_env
        """Not None: run in a container (``services.runners.container_life``), the image chosen from this environment."""

    # ------------------------------------------------------------ Runner

    async def start(self) -> None:
        if self._binary is None and self._docker_env is None:
            raise RunnerError(f"{self.service}: {BINARY} not found (apt-get install redis-server)")
        data = self._dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self._as = self._unprivileged_user()
        chown_tree(data, self._as)
        port = pick_port(self._host, self._want_port)
        self._want_port = port  # restarts of this runner keep its port
        self._write_config(port)
        if self._docker_env is None:
            assert self._binary is not None
            argv, env = guarded_argv([self._binary, str(self._dir / "redis.conf")], self._as), {}
        else:
            argv, env = contained_argv(
                SERVICE, self.service, self._dir, self._node_id, [BINARY, str((self._dir / "redis.conf").resolve())], self._as, self._docker_env
            )  # fmt: skip
        self.supervisor = NativeSupervisor(
            self.service, argv, env, self._host, port, self._ping,
            policy=self._policy, on_give_up=self._gave_up,
        )  # fmt: skip
        await self.supervisor.start_ready(READY_TIMEOUT)
        log.info(
            "node %s: service %s started as %s on %s:%d (%s)%s",
            self._node_id, self.service, self._role, self._host, port,
            f"pid {self.supervisor.pid}" if self._docker_env is None else f"container of {image_for(SERVICE, self._docker_env)}",
            f", replica of {self._primary}" if self._primary else "",
        )  # fmt: skip

    # ------------------------------------------------------------ StatefulRunner

    async def set_role(self, role: Role, primary: Endpoint | None) -> None:
        primary = checked_primary(role, primary)
        changed = (role, primary) != (self._role, self._primary)
        self._role, self._primary = role, primary
        if self.supervisor is None or self.port is None:
            return  # applied by start()
        self._write_config(self.port)
        if not changed:
            return
        args = ("REPLICAOF", "NO", "ONE") if primary is None else ("REPLICAOF", primary.host, primary.port)
        await self.command(*args)
        log.info("node %s: service %s is now %s%s", self._node_id, self.service, role, f" of {primary}" if primary else "")

    async def replication(self) -> ReplicationState:
        info = parse_info(await self.command("INFO", "replication"))  # type: ignore[arg-type]
        if info.get("role") == "master":
            return ReplicationState("primary", True, _streaming_replicas(info), int(info.get("master_repl_offset", 0)))
        return ReplicationState(
            "replica", info.get("master_link_status") == "up", 0,
            int(info.get("slave_repl_offset", info.get("master_repl_offset", 0))),
        )  # fmt: skip

    async def set_fenced(self, fenced: bool) -> None:
        """Refuse every write (``NOREPLICAS``) or take them again; reads go on. Kept across restarts."""
        self._fenced = fenced
        if self.supervisor is None or self.port is None:
            return
        self._write_config(self.port)
        await self.command("CONFIG", "SET", "min-replicas-to-write", FENCE_REPLICAS if fenced else 0)

    async def quiesce(self, timeout: float) -> bool:
        """Stop taking writes and wait until a replica acknowledged all of them; True when one has (bounded).

        ``CLIENT PAUSE … WRITE`` holds every client's writes (reads go on)
        for ``timeout`` plus a margin, longer than this copy is meant to
        live: the caller stops it next. A replica acknowledges its offset
        about once a second, so this takes up to a second.
        """
        await self.command("CLIENT", "PAUSE", int((timeout + 30.0) * 1000), "WRITE")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = parse_info(await self.command("INFO", "replication"))  # type: ignore[arg-type]
            if _acked_offset(info) >= int(info.get("master_repl_offset", 0)):
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def wait_linked(self, timeout: float) -> None:
        """Wait until this copy is a replica streaming from its primary (bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = await self.replication()
            if state.role == "replica" and state.linked:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.service}: replica not linked to {self._primary} after {timeout:g} s")
            await asyncio.sleep(0.05)

    async def command(self, *args: str | bytes | int) -> object:
        """One command on a fresh authenticated connection to this copy."""
        endpoint = self._running_endpoint()
        client = await RespClient.connect(endpoint.host, endpoint.port, self._password)
        try:
            return await client.command(*args)
        finally:
            await client.close()

    # ------------------------------------------------------------ internals

    def _write_config(self, port: int) -> None:
        text = render_config(host=self._host, port=port, data=(self._dir / "data").resolve(), password=self._password, primary=self._primary, fenced=self._fenced)
        atomic_write(self._dir / "redis.conf", text.encode(), mode=0o600)
        chown_tree(self._dir / "redis.conf", self._as)

    def _unprivileged_user(self) -> RunAs | None:
        user = os.environ.get(USER_ENV, DEFAULT_USER)
        try:
            as_user = run_as(user)
        except RunnerError:
            log.warning("node %s: service %s runs as root: user %r does not exist", self._node_id, self.service, user)
            return None
        blocked = unreachable_ancestor(self._dir, as_user)
        if blocked is not None:
            log.warning("node %s: service %s runs as root: user %s cannot reach %s (no search permission on %s)", self._node_id, self.service, user, self._dir, blocked)
            return None
        return as_user

    async def _ping(self) -> bool:
        assert self.supervisor is not None and self.supervisor.port is not None
        try:
            client = await RespClient.connect(connect_host(self._host), self.supervisor.port, self._password, timeout=2.0)
        except RespError:
            return False
        try:
            reply = await asyncio.wait_for(client.command("PING"), 2.0)
        except RespError:
            return False  # LOADING: alive, not ready
        finally:
            await client.close()
        return reply == "PONG"


def _acked_offset(info: dict[str, str]) -> int:
    """The highest offset an online replica acknowledged (-1 with none): ``slaveN:...,offset=N,...``."""
    best = -1
    for k, v in info.items():
        if k.startswith("slave") and k[5:].isdigit() and "state=online" in v:
            fields = dict(part.split("=", 1) for part in v.split(",") if "=" in part)
            with contextlib.suppress(ValueError):
                best = max(best, int(fields.get("offset", "-1")))
    return best


def _streaming_replicas(info: dict[str, str]) -> int:
    # slaveN:ip=...,port=...,state=online,offset=...,lag=...
    return sum(1 for k, v in info.items() if k.startswith("slave") and k[5:].isdigit() and "state=online" in v)
