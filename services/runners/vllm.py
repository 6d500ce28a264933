"""llm-inference and vision-ocr on a CUDA GPU: vLLM's OpenAI-compatible server as the supervised process.

The child (``python -m services.runners.vllm --service S --host H --port P``)
is a launcher that becomes vLLM: it reads the settings of ``S`` from the
environment (``services.engine_choice``: ``MODEL_NAME``,
``GPU_MEMORY_UTILIZATION``, ``MAX_MODEL_LEN`` for llm-inference;
``RMAP2P_VISION_*`` for vision-ocr), picks a free port when ``P`` is 0,
announces it (``RMAP2P-LISTENING <port>``) and ``exec``s

    python -m vllm.entrypoints.openai.api_server --model M
        --gpu-memory-utilization U --max-model-len L --host H --port P

(plus ``--middleware services.runners.vllm_ocr.ocr_middleware`` for
vision-ocr, which adds ``POST /ocr`` to vLLM's server), so the supervisor's
process *is* vLLM: its ``/health`` (200, empty body, once
the engine runs) is the readiness check, its exit is the liveness fact. vLLM
does not watch stdin, so before ``exec`` the launcher asks Linux to SIGTERM it
when the daemon dies (``PR_SET_PDEATHSIG`` survives ``exec``): no orphan keeps
the GPU. Bad settings or no ``vllm`` package: exit 78 before anything starts.

vLLM's health document is empty, so ``VllmRunner`` learns the served model
from ``GET /v1/models`` once per ready run; that is the node's
``loaded_models``. Its load progress is read from its log (the checkpoint
shards' progress lines, ``services.load_progress.vllm_progress``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import aiohttp

from services.engine_choice import (
    MODULES,
    VLLM,
    SettingsError,
    module_present,
    vllm_argv,
    vllm_settings,
)
from services.load_progress import vllm_progress
from services.runners.native import pick_port
from services.runners.process import ProcessRunner
from services.runners.serve import parse_args
from services.supervisor import EXIT_CONFIG, LISTENING, RestartPolicy, connect_host

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

VLLM_POLICY = RestartPolicy(ready_timeout=1800.0, unresponsive_after=60.0, stop_timeout=30.0)
"""vLLM loads weights and captures CUDA graphs before its first /health: minutes for a large model;
a busy engine can be slow to answer /health; it needs time to free the GPU on SIGTERM."""


class VllmRunner(ProcessRunner):
    """``ProcessRunner`` of the vLLM launcher, whose loaded model comes from ``/v1/models``."""

    def __init__(
        self,
        service: str,
        host: str,
        port: int,
        node_id: str,
        env: Mapping[str, str],
        *,
        policy: RestartPolicy | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(
            service, __name__, host, port, node_id, env, policy=policy or VLLM_POLICY, on_failed=on_failed,
            progress_parser=vllm_progress,  # its log's "Loading safetensors checkpoint shards: 50% Completed"
        )
        self._models: tuple[str, ...] = ()
        self._models_run = -1

    @property
    def loaded_models(self) -> tuple[str, ...]:
        if not self.supervisor.ready or self._models_run != self.supervisor.runs:
            return ()
        return self._models

    async def health(self) -> str:
        state = await super().health()
        if state == "healthy" and self._models_run != self.supervisor.runs:
            models = await self._fetch_models()
            if models is not None:
                self._models, self._models_run = models, self.supervisor.runs
        return state

    async def _fetch_models(self) -> tuple[str, ...] | None:
        port = self.supervisor.port
        if port is None:
            return None
        url = f"http://{connect_host(self._host)}:{port}/v1/models"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session, session.get(url) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            return None
        return tuple(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))


def die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent dies (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, 15, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("cannot set PR_SET_PDEATHSIG; vLLM may outlive a killed daemon")


def launch(argv: Sequence[str] | None, env: Mapping[str, str], execv: Callable[[str, list[str]], object] = os.execv) -> int:
    """Validate, announce, and become vLLM. Returns an exit status only when it cannot start."""
    args = parse_args(argv, "rmap2p launcher of vLLM's OpenAI-compatible server")
    missing = [m for m in MODULES[VLLM] if not module_present(m)]
    if missing:
        print(f"{args.service} cannot run on this machine: vllm is not installed (pip install '.[gpu]')", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    try:
        settings = vllm_settings(args.service, env)
    except (SettingsError, KeyError) as exc:
        print(f"{args.service} cannot run on this machine: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    port = pick_port(args.host, args.port)
    command = vllm_argv(sys.executable, settings, args.host, port)
    # For middleware running inside vLLM (vision-ocr's /ocr calls the server it runs in).
    os.environ.update(
        RMAP2P_VLLM_PORT=str(port), RMAP2P_VLLM_MODEL=settings.model, RMAP2P_VLLM_MAX_MODEL_LEN=str(settings.max_model_len)
    )
    print(f"{LISTENING} {port}", flush=True)
    print(f"node {args.node_id}: {args.service}: exec {' '.join(command)}", file=sys.stderr, flush=True)
    die_with_parent()
    execv(command[0], command)
    return 1  # only reached with a test's execv


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(launch(argv, os.environ))


if __name__ == "__main__":
    main()
