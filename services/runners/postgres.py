"""PostgreSQL: a supervised ``postgres`` (PostgreSQL's own binaries), primary or streaming replica.

Layout of ``<data dir>/services/postgres/``::

    password     the pool's password of the ``postgres`` superuser (0600, services.credentials)
    pgdata/      the cluster (initdb), owned by the user the server runs as, 0700
                 pgdata/rmap2p.conf: our settings, rewritten before every start (0600)

Binaries: Debian installs them in ``/usr/lib/postgresql/<major>/bin``, off
the PATH; ``find_bin_dir`` takes ``RMAP2P_PG_BIN``, then the newest such
directory, then ``pg_config --bindir``, then the PATH.

Privileges: PostgreSQL refuses to run as root. When the daemon is root, every
PostgreSQL program (initdb, postgres, pg_basebackup, pg_rewind, pg_ctl)
runs as ``RMAP2P_POSTGRES_USER`` (default ``postgres``, the user the Debian
package creates) through ``setpriv``, and ``pgdata`` is owned by that user.
Every directory above it must let that user pass (search permission); the
runner says which one does not instead of failing obscurely.

Roles and replication (streaming, WAL level ``replica``):

- a first start as primary runs ``initdb`` (data checksums on, SCRAM
  authentication, the superuser's password from the password file);
- a first start as replica copies the primary with ``pg_basebackup`` and
  follows it (``standby.signal``, ``primary_conninfo``);
- ``set_role("primary")`` on a replica: ``pg_ctl promote``: it keeps its
  data and takes writes on a new timeline (a standby's data dir started as
  primary is started as a standby and promoted the same way);
- a copy that was primary and must now be a replica (an old primary coming
  back) is stopped, rewound onto the new primary's timeline with
  ``pg_rewind`` (its divergent, unreplicated transactions are discarded:
  one history, no split brain) and restarted as a standby; where the rewind
  fails its data dir is set aside (``pgdata.discarded``) and copied afresh.
- ``synchronous=True``: the primary commits only once a standby has the
  WAL (``synchronous_standby_names = '*'``); ``set_synchronous(False)``
  turns it off when no replica can exist (commits would wait forever).

Stopping sends SIGINT (fast shutdown: clients disconnected, a clean
checkpoint); SIGTERM would wait for every client to leave.

Container: with ``docker_env`` every program runs in the official image
(``services.runners.container_life``): the server as a container stopped
with the daemon through its attached stdin, the others as short
containers; ``pg_ctl promote``/``reload`` become ``pg_promote()`` and
``pg_reload_conf()`` (pg_ctl would signal a pid of another namespace), and
readiness is asked in the wire protocol (``accepting_connections``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

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
from services.stateful import Endpoint, ReplicationState, Role
from services.supervisor import RestartPolicy, connect_host

log = logging.getLogger(__name__)

SERVICE = "postgres"
DEFAULT_PORT = 5432
SUPERUSER = "postgres"
USER_ENV = "RMAP2P_POSTGRES_USER"
BIN_ENV = "RMAP2P_PG_BIN"
CONTAINER_UID = 999
"""The official image's ``postgres`` uid: who a container runs as when the daemon is root and ``RMAP2P_POSTGRES_USER`` does not exist."""
READY_TIMEOUT = 120.0
COMMAND_TIMEOUT = 600.0
PROGRAMS = ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_isready", "psql")


def find_bin_dir(env: Mapping[str, str] = os.environ) -> Path | None:
    """The directory holding PostgreSQL's server programs on this machine, or None."""
    candidates: list[str] = []
    if env.get(BIN_ENV):
        candidates.append(env[BIN_ENV])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    candidates += debian
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if candidate and (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    return None


def _major(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def conninfo(endpoint: Endpoint, password: str, dbname: str = "postgres") -> str:
    """A libpq connection string (values quoted as libpq wants). Pure."""
    def q(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"host={q(endpoint.host)} port={endpoint.port} user={SUPERUSER} password={q(password)} dbname={q(dbname)}"


def render_config(*, host: str, port: int, primary: Endpoint | None, password: str, synchronous: bool, fenced: bool = False) -> str:
    """``rmap2p.conf``, included by ``postgresql.conf``. Pure."""
    def q(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    lines = [
        f"listen_addresses = {q('*' if host in ('0.0.0.0', '::', '') else host)}",
        f"port = {port}",
        # TCP only: a socket path under a deep data dir can exceed the 107-byte limit.
        "unix_socket_directories = ''",
        "password_encryption = 'scram-sha-256'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "wal_keep_size = '512MB'",
        "hot_standby = on",
        "wal_log_hints = on",
        "fsync = on",
        "synchronous_commit = on",
    ]
    if primary is not None:
        # recovery_target_timeline defaults to 'latest': a standby follows its primary's promotions.
        lines.append(f"primary_conninfo = {q(conninfo(primary, password))}")
    elif synchronous:
        lines.append("synchronous_standby_names = '*'")
    if fenced:
        # Every new transaction read-only (a client can still SET it off: a fence, not a lock).
        lines.append("default_transaction_read_only = on")
    return "\n".join(lines) + "\n"


HBA = """\
# Written by rmap2p: every connection authenticates with the pool's password (SCRAM).
local   all          all                  scram-sha-256
host    all          all      0.0.0.0/0   scram-sha-256
host    all          all      ::/0        scram-sha-256
host    replication  all      0.0.0.0/0   scram-sha-256
host    replication  all      ::/0        scram-sha-256
"""


class PostgresRunner(NativeServerRunner):
    """One copy of ``postgres``; see the module docstring."""

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
        synchronous: bool = False,
        bin_dir: Path | None = None,
        user: str | None = None,
        service: str = SERVICE,
        docker_env: Mapping[str, str] | None = None,
    ) -> None:
        # In a container the data dir is bind-mounted at the same path: paths in commands must be absolute.
        service_dir = Path(service_dir).resolve() if docker_env is not None else service_dir
        super().__init__(service_dir, host, port, node_id, password, service=service, policy=policy, on_failed=on_failed)
        self._docker_env = docker_env
        """Not None: every PostgreSQL program runs in a container (``services.runners.container_life``), the image chosen from this environment."""
        self._pgdata = self._dir / "pgdata"
        self._synchronous = synchronous
        self._bin = bin_dir or find_bin_dir()
        self._user = user or os.environ.get(USER_ENV, SUPERUSER)

    # ------------------------------------------------------------ Runner

    @property
    def pgdata(self) -> Path:
        return self._pgdata

    async def start(self) -> None:
        if self._bin is None and self._docker_env is None:
            raise RunnerError(f"{self.service}: PostgreSQL's server programs not found (apt-get install postgresql, or set {BIN_ENV})")
        self._as = self._server_user()
        self._dir.mkdir(parents=True, exist_ok=True)
        # A container sees only the service dir (mounted as root's): the host's ancestors do not matter there.
        blocked = unreachable_ancestor(self._dir, self._as) if self._docker_env is None else None
        if blocked is not None:
            raise RunnerError(
                f"{self.service}: user {self._user} cannot reach {self._dir}: {blocked} has no search permission for it "
                f"(chmod o+x {blocked}, or use a --data-dir it can reach)"
            )
        port = pick_port(self._host, self._want_port)
        self._want_port = port
        await self._prepare_data()
        self._write_config(port)
        if self._docker_env is None:
            assert self._bin is not None
            argv, env = guarded_argv([str(self._bin / "postgres"), "-D", str(self._pgdata)], self._as), self._env()
        else:
            argv, env = contained_argv(SERVICE, self.service, self._dir, self._node_id, ["postgres", "-D", str(self._pgdata)], self._as, self._docker_env)
        self.supervisor = NativeSupervisor(
            self.service, argv, env, self._host, port, self._is_ready,
            policy=self._policy, on_give_up=self._gave_up, stop_signal=signal.SIGINT,
        )  # fmt: skip
        await self.supervisor.start_ready(READY_TIMEOUT)
        if self._role == "primary" and (self._pgdata / "standby.signal").exists():
            # Told to be primary while holding a standby's data: start as a standby (replaying
            # what it has) and promote, so that its history forks onto a new timeline. Starting
            # it without standby.signal would continue the old timeline, which pg_rewind could
            # then not tell apart from the former primary's.
            await self._promote()
        log.info(
            "node %s: service %s started as %s on %s:%d (%s)%s",
            self._node_id, self.service, self._role, self._host, port,
            f"pid {self.supervisor.pid}" if self._docker_env is None else f"container of {image_for(SERVICE, self._docker_env)}",
            f", standby of {self._primary}" if self._primary else "",
        )  # fmt: skip

    async def stop(self) -> None:
        await super().stop()
        self.supervisor = None

    # ------------------------------------------------------------ StatefulRunner

    async def set_role(self, role: Role, primary: Endpoint | None) -> None:
        primary = checked_primary(role, primary)
        before_role, before_primary = self._role, self._primary
        self._role, self._primary = role, primary
        if self.supervisor is None or self.port is None:
            return  # applied by start()
        if (role, primary) == (before_role, before_primary):
            return
        if role == "primary":
            # A standby promoted keeps its data; the config loses primary_conninfo for its restarts.
            self._write_config(self.port)
            await self._promote()
        elif before_role == "replica":
            self._write_config(self.port)
            await self._reload()  # primary_conninfo reloads without a restart
            log.info("node %s: service %s now follows %s", self._node_id, self.service, primary)
        else:
            # A primary cannot become a standby live: stop, rewind onto the new primary, start as standby.
            log.warning("node %s: service %s demoted: rewinding onto %s", self._node_id, self.service, primary)
            await self.stop()
            await self.start()

    async def _promote(self) -> None:
        """End recovery on a new timeline (idempotent: a server already out of recovery is left alone)."""
        if (await self.sql("SELECT pg_is_in_recovery()")).strip() != "t":
            return
        if self._docker_env is None:
            await self._run("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self._pgdata))
        elif (await self.sql("SELECT pg_promote(true, 60)")).strip() != "t":
            # pg_ctl signals the postmaster's pid, which is in the server container's namespace, not a program container's.
            raise RunnerError(f"{self.service}: pg_promote did not finish within 60 s")
        # The control file names the new timeline only after a checkpoint; pg_rewind of the
        # old primary against us reads it ("same timeline, no rewind required" otherwise).
        await self.sql("CHECKPOINT")
        log.info("node %s: service %s promoted to primary", self._node_id, self.service)

    async def _reload(self) -> None:
        """Make the server re-read its config (``primary_conninfo``, fencing, synchronous commits)."""
        if self._docker_env is None:
            await self._run("pg_ctl", "reload", "-D", str(self._pgdata))
        else:
            await self.sql("SELECT pg_reload_conf()")

    def _server_user(self) -> RunAs | None:
        """Who runs PostgreSQL's programs: as root, ``RMAP2P_POSTGRES_USER`` (in a container, its uid or else the official image's 999)."""
        try:
            return run_as(self._user)
        except RunnerError:
            if self._docker_env is None:
                raise
            # The container's /etc/passwd is ours (container_life): any uid but root will do.
            return RunAs(self._user, CONTAINER_UID, CONTAINER_UID)

    async def set_synchronous(self, synchronous: bool) -> None:
        """Whether the primary's commits wait for a standby; off when no replica can exist."""
        if synchronous == self._synchronous:
            return
        self._synchronous = synchronous
        if self.supervisor is not None and self.port is not None:
            self._write_config(self.port)
            await self._reload()

    async def set_fenced(self, fenced: bool) -> None:
        """Make new transactions read-only and end the open sessions (those waiting on a synchronous
        commit get an error, not a success), or take writes again."""
        self._fenced = fenced
        if self.supervisor is None or self.port is None:
            return
        self._write_config(self.port)
        await self._reload()
        if fenced:
            await self.sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )

    async def quiesce(self, timeout: float) -> bool:
        """Wait (bounded) until a streaming standby has flushed all WAL written so far; True when one has.

        Writes are not held here: the caller stops the server next, and a
        fast shutdown sends the standbys every WAL record up to its shutdown
        checkpoint before it exits. This wait keeps that last step short.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            out = await self.sql(
                "SELECT coalesce(max(flush_lsn) >= pg_current_wal_lsn(), false) FROM pg_stat_replication WHERE state = 'streaming'"
            )
            if out.strip() == "t":
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def replication(self) -> ReplicationState:
        out = await self.sql(
            "SELECT pg_is_in_recovery(), "
            "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'), "
            "(SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'), "
            "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn"
        )
        in_recovery, senders, receivers, lsn = out.strip().split("|")
        if in_recovery == "t":
            return ReplicationState("replica", receivers == "1", 0, int(float(lsn or 0)))
        return ReplicationState("primary", True, int(senders), int(float(lsn or 0)))

    async def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run ``statement`` with psql on this copy; its unaligned, tuples-only output."""
        endpoint = self._running_endpoint()
        return await self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement, conninfo(endpoint, self._password, dbname),
            as_server_user=False,
        )  # fmt: skip

    # ------------------------------------------------------------ data dir

    async def _prepare_data(self) -> None:
        has_data = (self._pgdata / "PG_VERSION").is_file()
        if not has_data:
            if self._pgdata.exists():
                shutil.rmtree(self._pgdata)  # a half-made copy (initdb or basebackup interrupted)
            if self._role == "primary":
                await self._initdb()
            else:
                await self._basebackup()
        elif self._role == "replica" and not (self._pgdata / "standby.signal").exists():
            await self._rewind()
        self._write_hba()

    async def _initdb(self) -> None:
        self._pgdata.mkdir(mode=0o700)
        chown_tree(self._pgdata, self._as)
        pwfile = self._dir / ".initdb-password"
        pwfile.write_text(self._password + "\n")
        os.chmod(pwfile, 0o600)
        chown_tree(pwfile, self._as)
        try:
            await self._run(
                "initdb", "-D", str(self._pgdata), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--locale=C", "--data-checksums", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self._pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# rmap2p's settings, rewritten at every start\ninclude_if_exists = 'rmap2p.conf'\n")
        log.info("node %s: service %s initialised a new cluster in %s", self._node_id, self.service, self._pgdata)

    async def _basebackup(self) -> None:
        assert self._primary is not None
        # pg_basebackup fills an existing empty directory: made here, owned by the server user, 0700.
        self._pgdata.mkdir(mode=0o700)
        chown_tree(self._pgdata, self._as)
        await self._run(
            "pg_basebackup", "-h", self._primary.host, "-p", str(self._primary.port), "-U", SUPERUSER,
            "-D", str(self._pgdata), "-X", "stream", "--checkpoint=fast", "--no-password",
            env={"PGPASSWORD": self._password},
        )  # fmt: skip
        (self._pgdata / "standby.signal").touch()
        chown_tree(self._pgdata, self._as)
        log.info("node %s: service %s copied the primary %s (pg_basebackup)", self._node_id, self.service, self._primary)

    async def _rewind(self) -> None:
        assert self._primary is not None
        self._clear_stale_pidfile()
        try:
            # A primary promoted moments ago may not have checkpointed its new timeline yet.
            await self._run(
                "psql", "-X", "-q", "-c", "CHECKPOINT", conninfo(self._primary, self._password), as_server_user=False
            )  # fmt: skip
            out = await self._run(
                "pg_rewind", "-D", str(self._pgdata), f"--source-server={conninfo(self._primary, self._password)}",
                stderr_to_stdout=True,
            )  # fmt: skip
            summary = " | ".join(out.strip().splitlines()[-3:])
            log.info("node %s: service %s rewound onto %s: %s", self._node_id, self.service, self._primary, summary)
        except RunnerError as exc:
            log.warning("node %s: service %s cannot rewind (%s): copying the primary afresh", self._node_id, self.service, exc)
            discarded = self._dir / "pgdata.discarded"
            if discarded.exists():
                shutil.rmtree(discarded)
            self._pgdata.rename(discarded)
            await self._basebackup()
            return
        (self._pgdata / "standby.signal").touch()
        chown_tree(self._pgdata, self._as)

    def _clear_stale_pidfile(self) -> None:
        """Remove ``postmaster.pid`` left by a killed server whose process is gone (or a zombie).

        pg_rewind's crash recovery refuses to run while that PID looks alive, and
        a zombie nobody reaped (a container without an init) does look alive.
        """
        path = self._pgdata / "postmaster.pid"
        if self._docker_env is not None:
            # Its pid is in a gone container's namespace (the server's container runs only between start and stop).
            path.unlink(missing_ok=True)
            return
        try:
            pid = int(path.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not _running(pid):
            path.unlink(missing_ok=True)
            log.info("node %s: service %s removed the stale postmaster.pid of dead pid %d", self._node_id, self.service, pid)

    def _write_config(self, port: int) -> None:
        text = render_config(host=self._host, port=port, primary=self._primary if self._role == "replica" else None, password=self._password, synchronous=self._synchronous, fenced=self._fenced)
        path = self._pgdata / "rmap2p.conf"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        chown_tree(tmp, self._as)
        os.replace(tmp, path)
        if self._role == "replica":
            (self._pgdata / "standby.signal").touch()
            chown_tree(self._pgdata / "standby.signal", self._as)

    def _write_hba(self) -> None:
        path = self._pgdata / "pg_hba.conf"
        path.write_text(HBA)
        os.chmod(path, 0o600)
        chown_tree(path, self._as)

    # ------------------------------------------------------------ plumbing

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **(extra or {})}

    async def _run(
        self, program: str, *args: str, env: Mapping[str, str] | None = None, as_server_user: bool = True, stderr_to_stdout: bool = False
    ) -> str:
        """Run one PostgreSQL program (as the server's user), bounded; its stdout, or ``RunnerError``.

        In a container every program runs as the server's user (the container has no other).
        """
        if self._docker_env is not None:
            argv, run_env = contained_argv(
                SERVICE, self.service, self._dir, self._node_id, [program, *args], self._as, self._docker_env,
                program_env=dict(env or {}), tool=program,
            )  # fmt: skip
        else:
            assert self._bin is not None
            argv = [str(self._bin / program), *args]
            if as_server_user:
                argv = guarded_argv(argv, self._as)
            run_env = self._env(env)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if stderr_to_stdout else asyncio.subprocess.PIPE,
            env=run_env, cwd=str(self._dir),
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RunnerError(f"{self.service}: {program} did not finish in {COMMAND_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
            raise RunnerError(f"{self.service}: {program} failed ({proc.returncode}): {' | '.join(tail)}")
        return out.decode(errors="replace")

    async def _is_ready(self) -> bool:
        assert self.supervisor is not None and self.supervisor.port is not None
        if self._docker_env is not None:
            # pg_isready would be a container per probe: ask the server directly.
            return await accepting_connections(connect_host(self._host), self.supervisor.port)
        assert self._bin is not None
        proc = await asyncio.create_subprocess_exec(
            str(self._bin / "pg_isready"), "-q", "-t", "2", "-h", connect_host(self._host), "-p", str(self.supervisor.port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=self._env(),
        )  # fmt: skip
        return await proc.wait() == 0


async def accepting_connections(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether PostgreSQL on ``host:port`` accepts connections (what pg_isready reports), in its own protocol.

    A startup message for the superuser: a server that accepts asks for
    authentication ('R'); one starting up, shutting down or in crash
    recovery answers an error ('E').
    """
    body = b"".join(k + b"\0" + v + b"\0" for k, v in ((b"user", SUPERUSER.encode()), (b"database", b"postgres"))) + b"\0"
    packet = struct.pack("!ii", 8 + len(body), 196608) + body  # protocol 3.0
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(packet)
        await writer.drain()
        first = await asyncio.wait_for(reader.read(1), timeout)
        return first == b"R"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")
