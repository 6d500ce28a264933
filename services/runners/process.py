"""A ``Runner`` whose service is a supervised child process (``services.supervisor``).

``health()`` maps the supervisor's state: ``healthy`` while the child's
``/health`` answers 200; ``starting`` until its first run is ready;
``unhealthy`` otherwise (restarting, hung, given up). ``loaded_models`` is
the model the child's health document names, while it is ready;
``load_progress`` how far it got loading, while it is not. ``failed``
is the give-up reason once supervision has given up: the node must then stop
offering the service (``on_failed`` tells it as it happens).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.runner import RunnerError
from services.supervisor import RestartPolicy, Supervisor, SupervisorError

log = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

OFFLINE_DEFAULTS = {
    # A node never downloads a model at run time; without these, a hub name that is
    # not cached makes transformers retry the network for minutes before failing.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


class ProcessRunner:
    def __init__(
        self,
        service: str,
        module: str,
        host: str,
        port: int,
        node_id: str,
        env: Mapping[str, str],
        *,
        policy: RestartPolicy | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        progress_parser: Callable[[str], int | None] | None = None,
    ) -> None:
        self.service = service
        self.module = module
        self._host = host
        self._node_id = node_id
        self._on_failed = on_failed
        self.supervisor = Supervisor(
            service,
            self._argv(port),
            child_env(env),
            host,
            policy=policy,
            on_give_up=self._gave_up,
            on_port=self._argv,
            progress_parser=progress_parser,
        )

    def _argv(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", self.module,
            "--service", self.service, "--host", self._host, "--port", str(port),
            "--node-id", self._node_id, "--exit-on-stdin-eof",
        ]  # fmt: skip

    @property
    def port(self) -> int | None:
        s = self.supervisor
        return s.port if s.state not in ("stopped", "failed") else None

    @property
    def loaded_models(self) -> tuple[str, ...]:
        doc = self.supervisor.health_doc
        if self.supervisor.ready and doc and isinstance(doc.get("model"), str):
            return (doc["model"],)
        return ()

    @property
    def load_progress(self) -> int | None:
        """How far the child got loading its model, in percent, while it is not ready; None when
        it is ready or cannot tell (``services.load_progress``)."""
        return None if self.supervisor.ready else self.supervisor.progress

    @property
    def failed(self) -> str | None:
        return self.supervisor.gave_up

    @property
    def health_doc(self) -> dict[str, Any] | None:
        return self.supervisor.health_doc

    async def start(self) -> None:
        try:
            await self.supervisor.start()
        except SupervisorError as exc:
            raise RunnerError(f"{self.service}: {exc}") from None
        log.info("node %s: service %s started (%s, pid %s)", self._node_id, self.service, self.module, self.supervisor.pid)

    async def health(self) -> str:
        state = self.supervisor.state
        if state == "ready" and self.supervisor.ready:
            return "healthy"
        if state == "starting":
            return "starting"
        return "unhealthy"

    async def stop(self) -> None:
        await self.supervisor.stop()
        log.info("node %s: service %s stopped", self._node_id, self.service)

    def _gave_up(self, service: str, reason: str) -> None:
        log.error("node %s: service %s failed for good: %s", self._node_id, service, reason)
        if self._on_failed is not None:
            self._on_failed(service, reason)


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment, the overrides, offline defaults, and this checkout on PYTHONPATH."""
    env = {**os.environ, **overrides}
    for key, value in OFFLINE_DEFAULTS.items():
        env.setdefault(key, value)
    # The child runs `python -m services.runners.X`: make the package importable even
    # when the daemon runs from a checkout that is not installed.
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PROJECT_ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, *paths])
    return env
