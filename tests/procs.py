"""Real ``rmap2p join`` processes on loopback, for tests that kill, restart and query them.

Each node gets its own data dir, gossip port and HTTP port, logs to files
under the test's tmp dir (printed on failure), and is always reaped at the
end. Polling helpers are bounded in time; nothing waits on a fixed sleep
when a condition can be polled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rmap2p.local_ports import free_port  # noqa: F401  (the tests take it from here)

ROOT = Path(__file__).resolve().parent.parent


class NodeProc:
    def __init__(
        self, name: str, workdir: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None,
        services: bool = False, echo: bool = True,
    ) -> None:
        self.services = services
        self.echo = echo
        """With services: run them as echo servers (overlay tests), or their real engines."""
        self.name = name
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.gossip_port = free_port()
        self.http_port = free_port()
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"
        self.starts = 0

    @property
    def gossip(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, join: Sequence[str] = (), extra: Sequence[str] = ()) -> NodeProc:
        argv = [
            sys.executable, "-m", "rmap2p", "-v", "join",
            "--bind", self.gossip, "--http", self.http, "--data-dir", str(self.data_dir),
            "--name", self.name, "--no-mdns", "--profile", "local",
            *(["--ephemeral-service-ports"] if self.services else ["--no-services"]),
            *(["--echo-services"] if self.services and self.echo else []),
            *self.extra, *extra,
        ]
        for j in join:
            argv += ["--join", j]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("RMAP2P_JOIN", None)
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def get(self, path: str, timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(f"http://{self.http}{path}", timeout=timeout) as resp:
            return json.load(resp)

    def try_get(self, path: str) -> Any | None:
        try:
            return self.get(path)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_healthy(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            doc = self.try_get("/health")
            if doc and doc.get("status") == "ok":
                return doc
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy after {timeout}s:\n{self.tail()}")

    def view(self) -> dict[str, dict]:
        """name -> worker document, as this node sees the pool."""
        doc = self.get("/api/admin/workers")
        return {w["name"]: w for w in doc["workers"]}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def healthy_runners(view: dict[str, dict], service: str) -> set[str]:
    """The alive members of ``view`` (``/api/admin/workers`` by name) that report ``service`` healthy."""
    return {w["worker_id"] for w in view.values() if w["status"] == "alive" and w["services_status"].get(service) == "healthy"}


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll ``pred`` until true; returns the seconds it took, or fails naming ``what``."""
    start = time.monotonic()
    deadline = start + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.monotonic() - start
            last_exc = None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def pid_gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` exits within ``timeout`` seconds (a zombie, dead but not reaped, counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (dead, not yet reaped by init) counts as gone.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False
