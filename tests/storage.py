"""Helpers for tests with real storage servers: install them, run storage nodes, talk to them.

``require_binary`` installs a missing server from the system packages once
(``apt-get``, as root) and skips with the reason where it cannot.
``StorageNode`` is one ``tests/storage_node.py`` process (a runner in its own
process, so SIGKILL is a node's death); its ``request`` speaks the node's
JSON-lines protocol. Everything is bounded in time and reaped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = Path(__file__).resolve().parent / "storage_node.py"
_apt_updated = False


def require_binary(name: str, package: str) -> str:
    """The path of ``name``, installing ``package`` with apt-get if missing; skip if impossible."""
    global _apt_updated
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{name} not installed and cannot install {package} (not root or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        _apt_updated = True
    done = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True, timeout=600)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name}: apt-get install {package} failed: {done.stderr.strip()[-300:]}")
    return path


@contextlib.contextmanager
def server_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that an unprivileged server user can enter (0711), removed after.

    Not pytest's ``tmp_path``: pytest resets ``/tmp/pytest-of-<user>`` to 0700
    whenever any pytest session starts (other engineers' included), which
    locks a running postgres (as user ``postgres``) out of its own data dir.
    """
    path = Path(tempfile.mkdtemp(prefix="rmap2p-storage-", dir="/tmp"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class StorageNode:
    """One storage runner in its own process (``tests/storage_node.py``)."""

    def __init__(
        self, service: str, data_dir: Path, log_path: Path, *, role: str = "primary", primary: str | None = None, synchronous: bool = False
    ) -> None:
        self.service = service
        self.data_dir = data_dir
        argv = [sys.executable, str(NODE_SCRIPT), service, str(data_dir), "--role", role]
        if primary:
            argv += ["--primary", primary]
        if synchronous:
            argv.append("--synchronous")
        self._log = open(log_path, "ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        self.started = time.monotonic()
        first = self._read_line(timeout=60)
        if "error" in first:
            self.kill()
            raise RuntimeError(f"{service} node in {data_dir} did not start: {first['error']}")
        self.port: int = first["port"]
        self.server_pid: int = first["pid"]
        self.password: str = first["password"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, op: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if "error" in answer:
            raise RuntimeError(f"{op}: {answer['error']}")
        return answer

    def set_role(self, role: str, primary: str | None = None) -> None:
        self.request("set_role", role=role, primary=primary)

    def sql(self, statement: str, timeout: float = 120) -> str:
        return str(self.request("sql", timeout=timeout, sql=statement)["out"])

    def wait_replication(self, pred: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while True:
            try:
                state = self.request("replication")
            except RuntimeError as exc:  # the server is down or restarting: ask again
                state = {"error": str(exc)}
            else:
                if pred(state):
                    return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.service} at {self.address}: replication state {state} after {timeout} s")
            time.sleep(0.1)

    def _read_line(self, timeout: float) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.service} node in {self.data_dir}: no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.service} node in {self.data_dir} exited ({self.proc.wait(5)})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request("stop", timeout=30)
            except (RuntimeError, TimeoutError, OSError, ValueError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the node process (its server dies with it by the parent-death signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class ProxyThread:
    """A ``ServiceProxy`` on its own event loop in a thread, for tests written without asyncio."""

    def __init__(self, service: str) -> None:
        import asyncio
        import threading

        from services.service_proxy import ServiceProxy

        self._loop = asyncio.new_event_loop()
        self.proxy = ServiceProxy(service, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{service}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        assert self.proxy.port is not None
        self.port: int = self.proxy.port

    def set_target(self, address: str | None) -> None:
        from services.stateful import Endpoint

        target = None
        if address:
            host, _, port = address.rpartition(":")
            target = Endpoint(host, int(port))
        self._loop.call_soon_threadsafe(self.proxy.set_target, target)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
