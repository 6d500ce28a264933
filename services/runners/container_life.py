"""Redis and PostgreSQL as containers that die with their daemon (the Docker path of the replicated engines).

A container belongs to the Docker engine, not to the process that made it,
so a daemon killed by SIGKILL would leave its server running: an orphaned
primary taking writes while its replica is promoted elsewhere. The native
runners avoid that with ``setpriv --pdeathsig``; a container gets the same
guarantee from its stdin:

- the container runs ``WRAPPER`` in the image's ``sh`` with stdin open: it
  starts the server in the background and a watcher that reads stdin until
  EOF, then signals the server (``TERM`` for Redis, ``INT`` for PostgreSQL's
  fast shutdown). The container ends when the server ends, for any reason.
- ``container_attach.py`` (a standalone script, the supervised child of
  ``services.runners.native.NativeSupervisor``, itself under ``--pdeathsig``)
  creates the container, holds an attached stdin socket
  (``attach_socket(params={'stdin': 1, 'stream': 1})``, ``StdinOnce``) for
  its whole life, relays the logs and exits with the server. When the
  daemon dies by any means the helper dies with it, the socket closes, the
  engine closes the container's stdin, ``cat`` sees EOF and the server stops.
- every container is labelled ``rmap2p.node`` / ``rmap2p.service``; a daemon
  removes its own leftovers (``remove_leftovers``) before it starts any.

The container shares the host's network (``network_mode=host``) and sees
the service directory at the same path as the host: the runner's config
files (``redis.conf``, ``rmap2p.conf``), the addresses in them and the
replication endpoints mean the same inside and out, so a containerised copy
and a native one replicate with each other. (Published ports would give the
server a private address its peers cannot reach on a loopback pool, and a
replica could not reach a primary published on the host's 127.0.0.1.) The
server listens on the service host and port as the native one does.

The server runs as the daemon's unprivileged user (``RunAs``), or as the
daemon's own uid when it is not root; ``/etc/passwd`` inside is a generated
file naming that uid (PostgreSQL's programs look their user up), mounted
read-only, so the files under the data dir keep one owner whichever way the
server runs. PostgreSQL's other programs (initdb, pg_basebackup, pg_rewind,
psql, pg_isready) run as short containers of the same image the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runners.docker_runner import container_name
from services.runners.native import RunAs, guarded_argv

log = logging.getLogger(__name__)

IMAGES: dict[str, str] = {"redis": "redis:7.4", "postgres": "postgres:15"}
"""PostgreSQL's major must match every other copy in the pool (pg_basebackup/pg_rewind): set ``RMAP2P_POSTGRES_IMAGE`` to the native nodes' major."""
IMAGE_ENV: dict[str, str] = {"redis": "RMAP2P_REDIS_IMAGE", "postgres": "RMAP2P_POSTGRES_IMAGE"}
STOP_SIGNALS: dict[str, str] = {"redis": "TERM", "postgres": "INT"}
"""What the wrapper sends its server on EOF: PostgreSQL's SIGTERM waits for every client, SIGINT is its fast shutdown."""
HELPER = Path(__file__).with_name("container_attach.py")
DOCKER_ENV = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "HOME", "PATH")
"""What the helper keeps of the daemon's environment (the supervisor gives its child only what it is told)."""

WRAPPER = (
    'sig="$1"; shift; '
    "exec 3<&0; "
    '"$@" <&- 3<&- & pid=$!; '
    # An asynchronous list's stdin is /dev/null unless redirected: the watcher reads the saved fd 3.
    '{ cat >/dev/null; kill -"$sig" "$pid" 2>/dev/null; } <&3 & watcher=$!; '
    "exec 3<&-; "
    'wait "$pid"; rc=$?; kill "$watcher" 2>/dev/null; exit "$rc"'
)
"""``sh -c WRAPPER wrapper SIGNAL PROGRAM ARGS...``: run PROGRAM until it exits or stdin reaches EOF (then SIGNAL it); its exit status."""


def wrapper_argv(signal_name: str, argv: Sequence[str], shell: str = "sh") -> list[str]:
    """``argv`` under ``WRAPPER`` (the container's whole command line, also runnable on the host). Pure."""
    return [shell, "-c", WRAPPER, "rmap2p-wrapper", signal_name, *argv]


@dataclass(frozen=True, slots=True)
class DbContainerSpec:
    """One container of a replicated engine: the server (``tool`` empty) or one of its programs."""

    name: str
    image: str
    command: list[str]
    """Entrypoint and command together: ``wrapper_argv`` of the program."""
    user: str
    volumes: dict[str, dict[str, str]]
    environment: dict[str, str]
    labels: dict[str, str]
    network_mode: str = "host"
    extra: dict[str, Any] = field(default_factory=dict)

    def create_kwargs(self) -> dict[str, Any]:
        """``client.containers.create`` keyword arguments: stdin open and attached once (``StdinOnce``). Pure."""
        return {
            "image": self.image,
            "name": self.name,
            # The image's entrypoint script would re-exec or chown; the wrapper is the whole command.
            "entrypoint": self.command[:1],
            "command": self.command[1:],
            "user": self.user,
            "volumes": dict(self.volumes),
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "network_mode": self.network_mode,
            "stdin_open": True,
            "detach": False,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps({"create": self.create_kwargs()})


def image_for(service: str, env: Mapping[str, str]) -> str:
    """The image of ``service`` (``IMAGES``, or its ``IMAGE_ENV`` override). Pure."""
    return env.get(IMAGE_ENV[service]) or IMAGES[service]


def passwd_text(uid: int, gid: int, name: str) -> str:
    """The container's ``/etc/passwd``: root and the user the server runs as. Pure."""
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if uid != 0:
        lines.append(f"{name}:x:{uid}:{gid}:{name}:/tmp:/bin/sh")
    return "\n".join(lines) + "\n"


def db_container_spec(
    engine: str,
    service_dir: Path,
    node_id: str,
    argv: Sequence[str],
    *,
    uid: int,
    gid: int,
    user_name: str,
    env: Mapping[str, str],
    program_env: Mapping[str, str] | None = None,
    tool: str = "",
    service: str = "",
) -> DbContainerSpec:
    """The container running ``argv`` in ``engine``'s image for ``service`` (default: the engine) of ``node_id``. Pure but for ``tool``'s name suffix.

    ``tool``: empty for the server (one per node and service, a fixed name,
    so a stale one is found and removed), else the program's name (a
    uniquely named short container).
    """
    if engine not in IMAGES:
        raise KeyError(f"no container path for {engine}")
    service = service or engine
    root = str(Path(service_dir).resolve())
    name = container_name(node_id, service)
    if tool:
        name = f"{name}-{tool}-{secrets.token_hex(3)}"
    labels = {"rmap2p.node": node_id, "rmap2p.service": service}
    if tool:
        labels["rmap2p.tool"] = tool
    return DbContainerSpec(
        name=name,
        image=image_for(engine, env),
        command=wrapper_argv(STOP_SIGNALS[engine], argv),
        user=f"{uid}:{gid}",
        volumes={
            root: {"bind": root, "mode": "rw"},
            str(Path(root) / "container-passwd"): {"bind": "/etc/passwd", "mode": "ro"},
        },
        environment={"LC_ALL": "C", **(program_env or {})},
        labels=labels,
    )


def write_passwd(service_dir: Path, uid: int, gid: int, name: str) -> None:
    """Write the file ``db_container_spec`` mounts on ``/etc/passwd`` (readable by the container's user)."""
    path = Path(service_dir) / "container-passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(passwd_text(uid, gid, name))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


SPEC_ENV = "RMAP2P_CONTAINER_SPEC"
"""How the helper gets its spec: in its environment (owner-only in /proc), not its argv, which any user can list."""


def helper_argv() -> list[str]:
    """The supervised child that runs a container and lives as long as it (see ``container_attach``)."""
    return [sys.executable, str(HELPER)]


def helper_env(spec: DbContainerSpec, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The helper's environment: its spec and the Docker client's settings, nothing else. Pure."""
    return {**{k: env[k] for k in DOCKER_ENV if k in env}, SPEC_ENV: spec.to_json()}


def leftover_filters(node_id: str) -> dict[str, Any]:
    """The engine's filter for every container this node made (any state). Pure."""
    return {"label": [f"rmap2p.node={node_id}"]}


def remove_leftovers(node_id: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """Remove the containers a previous run of this node left (a killed daemon's); their names. No engine: none."""
    from services.storage_probe import docker_engine_present

    if not docker_engine_present(env):
        return []
    import docker

    client = docker.from_env(timeout=30)
    removed = []
    try:
        for container in client.containers.list(all=True, filters=leftover_filters(node_id)):
            with contextlib.suppress(Exception):  # gone already: the wanted end
                container.remove(force=True, v=True)
                removed.append(container.name)
    finally:
        client.close()
    for name in removed:
        log.warning("node %s: removed the leftover container %s of an earlier run", node_id, name)
    return removed


def contained_argv(
    engine: str,
    service: str,
    service_dir: Path,
    node_id: str,
    argv: Sequence[str],
    as_user: RunAs | None,
    env: Mapping[str, str],
    *,
    program_env: Mapping[str, str] | None = None,
    tool: str = "",
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a supervised child that runs ``argv`` in ``engine``'s image as ``as_user`` (else as us).

    The child is under ``guarded_argv`` (killed with the daemon), so the
    container's stdin closes with the daemon. Writes the container's passwd file.
    """
    uid, gid, name = (as_user.uid, as_user.gid, as_user.user) if as_user is not None else (os.getuid(), os.getgid(), "rmap2p")
    write_passwd(service_dir, uid, gid, name)
    spec = db_container_spec(engine, service_dir, node_id, argv, uid=uid, gid=gid, user_name=name, env=env, program_env=program_env, tool=tool, service=service)
    return guarded_argv(helper_argv()), helper_env(spec, env)
