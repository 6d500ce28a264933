"""Supervision of a server binary that does not speak our child protocol (redis-server, postgres).

``services.supervisor.Supervisor`` expects a child that announces its port
on stdout and answers ``GET /health``. A database server does neither, so
``NativeSupervisor`` keeps the supervisor's whole restart/back-off/give-up
loop and changes three things:

- the port is chosen before the spawn (it is in the server's config), so
  there is nothing to wait for on stdout;
- readiness is ``probe()``, an engine-specific check (a Redis ``PING``,
  ``pg_isready``), not an HTTP request;
- stopping sends ``stop_signal`` first (PostgreSQL's fast shutdown is
  SIGINT; its SIGTERM waits for every client to disconnect), passed on to
  the supervisor.

These override the supervisor's ``_check``; if the supervisor grows a
``probe=`` parameter this subclass becomes two arguments.

The binary does not read stdin, so the supervisor's "EOF on stdin ends the
child" guard does not apply; ``guarded_argv`` runs it under ``setpriv
--pdeathsig KILL`` instead: the kernel kills the server when the daemon
dies, even by SIGKILL, so an orphaned primary cannot keep accepting writes
after its node is gone (that would be a split brain). ``setpriv`` also drops
privileges (``--reuid``) for servers that refuse root, and applies the death
signal after the user change, which would otherwise clear it.

``NativeServerRunner`` is what the runners of such servers (``redis_server``,
``postgres``) share: the password check, the ``Runner`` side over the
supervisor, the role bookkeeping and the give-up report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.runner import RunnerError
from services.stateful import Endpoint, Role
from services.supervisor import RestartPolicy, Supervisor, SupervisorError, connect_host

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user a server runs as when the daemon is root."""

    user: str
    uid: int
    gid: int


def run_as(user: str) -> RunAs | None:
    """``RunAs`` for ``user`` when this process is root; None when not root (run as ourselves).

    Raises ``RunnerError`` when root and the user does not exist.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RunnerError(f"the daemon runs as root and user {user!r} does not exist (create it: useradd --system {user})") from None
    return RunAs(user, entry.pw_uid, entry.pw_gid)


def guarded_argv(argv: Sequence[str], as_user: RunAs | None = None) -> list[str]:
    """``argv`` under ``setpriv``: killed with the daemon, and as ``as_user`` if given."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if as_user is not None:
            raise RunnerError(f"cannot drop privileges to {as_user.user}: setpriv (util-linux) not found")
        return list(argv)
    prefix = [setpriv]
    if as_user is not None:
        prefix += ["--reuid", str(as_user.uid), "--regid", str(as_user.gid), "--init-groups"]
    return [*prefix, "--pdeathsig", "KILL", *argv]


def chown_tree(path: str | os.PathLike[str], as_user: RunAs | None) -> None:
    """Give ``path`` and everything under it to ``as_user`` (nothing when None)."""
    if as_user is None:
        return
    os.chown(path, as_user.uid, as_user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), as_user.uid, as_user.gid, follow_symlinks=False)


def unreachable_ancestor(path: str | os.PathLike[str], as_user: RunAs | None) -> str | None:
    """The first ancestor of ``path`` that ``as_user`` cannot traverse (no search permission), or None."""
    if as_user is None:
        return None
    current = os.path.abspath(path)
    ancestors = []
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            break
        ancestors.append(parent)
        current = parent
    for directory in reversed(ancestors):
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return None
        if st.st_uid == as_user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == as_user.gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return directory
    return None


def pick_port(host: str, port: int) -> int:
    """``port``, or a free TCP port on ``host`` when it is 0 (servers need a number in their config)."""
    if port:
        return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NativeSupervisor(Supervisor):
    """A ``Supervisor`` for a server on a known port, ready when ``probe()`` says so."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        host: str,
        port: int,
        probe: Probe,
        *,
        policy: RestartPolicy | None = None,
        on_give_up: Callable[[str, str], None] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        super().__init__(name, argv, env, host, policy=policy, on_give_up=on_give_up, stop_signal=stop_signal)
        self.port = port
        self._probe = probe

    async def start_ready(self, timeout: float) -> None:
        """Spawn the server and wait until it is ready; ``RunnerError`` (and stopped) if it is not.

        A first run that exits before it is ready fails the start at once
        (a port taken or a broken data dir does not heal by waiting).
        """
        try:
            # Nothing is announced on stdout: do not wait for it.
            await self.start(announce_timeout=0.01)
        except SupervisorError as exc:
            raise RunnerError(str(exc)) from None
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self.runs > 1 or self.state in ("failed", "restarting") or not self.alive:
                await self._drain_stderr()
                reason = self.gave_up or self._last_words()
                await self.stop()
                raise RunnerError(f"{self.name}: exited before it was ready: {reason}")
            if time.monotonic() > deadline:
                await self.stop()
                raise RunnerError(f"{self.name}: not ready within {timeout:g} s: {self._last_words()}")
            await asyncio.sleep(0.05)

    async def _check(self) -> bool:
        try:
            return await self._probe()
        except (OSError, TimeoutError, ValueError):
            return False


class NativeServerRunner:
    """The part every runner of a server under ``NativeSupervisor`` shares; subclasses start it.

    A subclass's ``start()`` makes ``self.supervisor``; it also gives
    ``set_role`` and ``replication`` (``services.stateful.StatefulRunner``).
    """

    def __init__(
        self,
        service_dir: Path,
        host: str,
        port: int,
        node_id: str,
        password: str,
        *,
        service: str,
        policy: RestartPolicy | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        if not password:
            raise RunnerError(f"{service}: refusing to run without a password")
        self.service = service
        self._dir = Path(service_dir)
        self._host = host
        self._want_port = port
        self._node_id = node_id
        self._password = password
        self._policy = policy
        self._on_failed = on_failed
        self._role: Role = "primary"
        self._fenced = False
        """A primary on a side of the pool without a majority refuses writes (``set_fenced``)."""
        self._primary: Endpoint | None = None
        self._as: RunAs | None = None
        self.supervisor: NativeSupervisor | None = None

    @property
    def port(self) -> int | None:
        s = self.supervisor
        return s.port if s is not None and s.state not in ("stopped", "failed") else None

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return ()

    @property
    def failed(self) -> str | None:
        return self.supervisor.gave_up if self.supervisor is not None else None

    @property
    def role(self) -> Role:
        return self._role

    @property
    def endpoint(self) -> Endpoint | None:
        port = self.port
        return Endpoint(connect_host(self._host), port) if port else None

    @property
    def password(self) -> str:
        return self._password

    async def health(self) -> str:
        s = self.supervisor
        if s is None or s.state == "starting":
            return "starting"
        return "healthy" if s.state == "ready" and s.ready else "unhealthy"

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
            log.info("node %s: service %s stopped", self._node_id, self.service)

    def _running_endpoint(self) -> Endpoint:
        """``endpoint``, or ``RunnerError`` when the server is not running."""
        endpoint = self.endpoint
        if endpoint is None:
            raise RunnerError(f"{self.service}: not running")
        return endpoint

    def _gave_up(self, service: str, reason: str) -> None:
        log.error("node %s: service %s failed for good: %s", self._node_id, service, reason)
        if self._on_failed is not None:
            self._on_failed(service, reason)


def checked_primary(role: Role, primary: Endpoint | None) -> Endpoint | None:
    """The primary a copy told to be ``role`` follows: None for a primary; a replica must name one."""
    if role == "replica" and primary is None:
        raise ValueError("a replica needs a primary")
    return None if role == "primary" else primary
