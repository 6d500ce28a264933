"""Run one container and live exactly as long as it: the supervised child of a containerised Redis/PostgreSQL.

Usage: ``RMAP2P_CONTAINER_SPEC=SPEC_JSON python container_attach.py`` (``services.runners.container_life``).
Standalone on purpose (only the Docker SDK): the supervisor starts it with a
bare environment under ``setpriv --pdeathsig KILL``.

It removes a stale container of the same name, pulls the image if missing,
creates the container with stdin open (``StdinOnce``), attaches to its stdin
and keeps that socket open, starts it, relays its stdout/stderr to its own,
and exits with the container's status after removing it. SIGTERM or SIGINT
(the supervisor's stop) closes the socket: the container's wrapper sees EOF
and stops the server, which then exits. If this process is killed outright
the kernel closes the socket all the same, which is the point.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from typing import Any


def _close(sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)
    for step in (lambda: raw.shutdown(socket.SHUT_RDWR), raw.close, sock.close):
        with contextlib.suppress(Exception):  # closed already
            step()


def _relay(container: Any, stdout: bool, out: Any) -> None:
    with contextlib.suppress(Exception):  # the container went away
        for chunk in container.logs(stream=True, follow=True, stdout=stdout, stderr=not stdout):
            out.write(chunk)
            out.flush()


def main() -> int:
    import docker
    import docker.errors

    spec = json.loads(os.environ["RMAP2P_CONTAINER_SPEC"])["create"]
    client = docker.from_env(timeout=None)
    try:
        client.containers.get(spec["name"]).remove(force=True, v=True)
        print(f"container_attach: removed the stale container {spec['name']}", file=sys.stderr, flush=True)
    except docker.errors.NotFound:
        pass
    try:
        client.images.get(spec["image"])
    except docker.errors.ImageNotFound:
        print(f"container_attach: pulling {spec['image']}", file=sys.stderr, flush=True)
        client.images.pull(spec["image"])
    container = client.containers.create(**spec)
    try:
        stdin = container.attach_socket(params={"stdin": 1, "stream": 1})

        def stop(signum: int, frame: Any) -> None:
            _close(stdin)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        container.start()
        relays = [threading.Thread(target=_relay, args=(container, flag, out), daemon=True) for flag, out in ((True, sys.stdout.buffer), (False, sys.stderr.buffer))]
        for t in relays:
            t.start()
        status = int(container.wait().get("StatusCode", 1))
        for t in relays:
            t.join(timeout=5)
        _close(stdin)
        return status
    finally:
        with contextlib.suppress(Exception):  # gone already
            container.remove(force=True, v=True)


if __name__ == "__main__":
    sys.exit(main())
