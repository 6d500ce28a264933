"""Which engine serves ``llm-inference`` and ``vision-ocr`` on this machine, and with what settings.

Both services have a GPU engine (vLLM) and a CPU one (llama.cpp; RapidOCR).
The choice is a pure function of hardware facts and the environment
(``choose``), table-tested; ``gather`` looks at the machine once, given the
GPUs the daemon detected (``gpus_from(rmap2p.hardware.detect_gpus())``).

- **vLLM** when the machine has a CUDA GPU (NVML sees one), the ``vllm``
  package is importable and the model is present: a local directory, or a hub
  name already in the Hugging Face cache (nodes never download at run time).
- **llama.cpp** (llm-inference) otherwise: ``llama_cpp`` with its server
  extras importable and a GGUF file configured (``RMAP2P_GGUF_MODEL``, or
  ``MODEL_NAME`` when it names a ``.gguf`` file).
- **RapidOCR** (vision-ocr) otherwise: ``rapidocr`` and ``onnxruntime``
  importable; its detection and recognition models ship inside its wheel.

Settings, with the seeds' names for llm-inference:

| variable | meaning | default |
|---|---|---|
| ``MODEL_NAME`` | vLLM model (hub name or directory) | ``meta-llama/Llama-3.2-3B-Instruct`` |
| ``GPU_MEMORY_UTILIZATION`` | vLLM's share of the GPU, 0 < x <= 1 | 0.5 |
| ``MAX_MODEL_LEN`` | context length (vLLM; llama.cpp's ``n_ctx``) | 4096 (vLLM), 2048 (llama.cpp) |
| ``RMAP2P_GGUF_MODEL`` | llama.cpp model file | ``MODEL_NAME`` if it is a ``.gguf`` file |
| ``RMAP2P_LLM_THREADS`` | llama.cpp threads | llama.cpp's own choice |
| ``RMAP2P_VISION_MODEL`` | vision-ocr's vLLM model | ``Qwen/Qwen2-VL-2B-Instruct`` |
| ``RMAP2P_VISION_GPU_MEMORY_UTILIZATION`` | its share of the GPU | 0.4 |
| ``RMAP2P_VISION_MAX_MODEL_LEN`` | its context length | 4096 |
| ``RMAP2P_VLLM_ARGS`` | extra vLLM flags for both (shell words) | none |

The two vLLM shares default to 0.5 and 0.4 so that both services fit on one
GPU when the allocator puts them on the same node; vLLM's own default (0.9)
would make the second one fail to start.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLM = "llm-inference"
OCR = "vision-ocr"

VLLM = "vllm"
LLAMA_CPP = "llama.cpp"
RAPIDOCR = "rapidocr"

DEFAULT_LLM_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
DEFAULT_VISION_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
DEFAULT_GPU_SHARE = {LLM: 0.5, OCR: 0.4}
DEFAULT_VLLM_MAX_LEN = 4096
OCR_MIDDLEWARE = "services.runners.vllm_ocr.ocr_middleware"
"""Adds vision-ocr's ``POST /ocr`` to vLLM's server."""
DEFAULT_LLAMA_CTX = 2048

MODULES = {
    VLLM: ("vllm",),
    LLAMA_CPP: ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"),
    RAPIDOCR: ("rapidocr", "onnxruntime"),
}
"""Top-level modules each engine needs importable."""

INSTALL_HINT = {
    VLLM: "pip install '.[gpu]'",
    LLAMA_CPP: "pip install '.[ml]' (llama-cpp-python[server] compiles llama.cpp: minutes)",
    RAPIDOCR: "pip install '.[ml]'",
}

MIN_VRAM_MB = 2048
"""Below this much free VRAM a GPU cannot hold even a small model next to vLLM's CUDA context."""

LLAMA_BASE_RAM_MB = 300
"""The interpreter, llama-cpp-python's server and a small KV cache, besides the weights (mapped from the file)."""


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    vram_total_mb: int
    vram_free_mb: int


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``choose`` needs to know about a machine."""

    gpus: tuple[Gpu, ...]
    modules: frozenset[str]
    """Importable modules among ``MODULES``'."""
    present_models: frozenset[str]
    """Model references (as configured) found on disk: directories, files, Hugging Face cache entries."""
    ram_available_mb: int | None = None
    """None: not known (no RAM check)."""
    model_sizes_mb: tuple[tuple[str, int], ...] = ()
    """Size on disk of the present model files, by reference."""

    def size_mb(self, ref: str) -> int:
        return next((size for r, size in self.model_sizes_mb if r == ref), 0)


@dataclass(frozen=True, slots=True)
class VllmSettings:
    model: str
    gpu_memory_utilization: float
    max_model_len: int
    extra_args: tuple[str, ...] = ()
    middleware: tuple[str, ...] = ()
    """Import paths of ASGI middleware vLLM's server loads (``--middleware``)."""


@dataclass(frozen=True, slots=True)
class LlamaCppSettings:
    model_path: str
    n_ctx: int
    n_threads: int | None = None

    @property
    def alias(self) -> str:
        """The model name clients see in ``/v1/models`` and the node reports as loaded: the file's stem."""
        return Path(self.model_path).stem


@dataclass(frozen=True, slots=True)
class Choice:
    """The engine ``choose`` picked (``backend`` None: none can run here) and why, in one line."""

    service: str
    backend: str | None
    reason: str
    settings: VllmSettings | LlamaCppSettings | None = None


class SettingsError(ValueError):
    """An environment variable has a value no engine accepts."""


# ------------------------------------------------------------ settings from the environment


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise SettingsError(f"{name}={raw!r} must be in (0, 1]")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value


def vllm_settings(service: str, env: Mapping[str, str]) -> VllmSettings:
    """vLLM's settings for ``service`` from ``env``; raises ``SettingsError``."""
    try:
        extra = tuple(shlex.split(env.get("RMAP2P_VLLM_ARGS", "")))
    except ValueError as exc:
        raise SettingsError(f"RMAP2P_VLLM_ARGS: {exc}") from None
    if service == LLM:
        model = env.get("MODEL_NAME", "").strip() or DEFAULT_LLM_MODEL
        share = _float(env, "GPU_MEMORY_UTILIZATION", DEFAULT_GPU_SHARE[LLM])
        max_len = _int(env, "MAX_MODEL_LEN", DEFAULT_VLLM_MAX_LEN)
    elif service == OCR:
        model = env.get("RMAP2P_VISION_MODEL", "").strip() or DEFAULT_VISION_MODEL
        share = _float(env, "RMAP2P_VISION_GPU_MEMORY_UTILIZATION", DEFAULT_GPU_SHARE[OCR])
        max_len = _int(env, "RMAP2P_VISION_MAX_MODEL_LEN", DEFAULT_VLLM_MAX_LEN)
    else:
        raise KeyError(service)
    assert max_len is not None
    middleware = (OCR_MIDDLEWARE,) if service == OCR else ()
    return VllmSettings(model=model, gpu_memory_utilization=share, max_model_len=max_len, extra_args=extra, middleware=middleware)


def gguf_ref(env: Mapping[str, str]) -> str | None:
    """The configured GGUF file, or None when none is configured."""
    explicit = env.get("RMAP2P_GGUF_MODEL", "").strip()
    if explicit:
        return explicit
    name = env.get("MODEL_NAME", "").strip()
    return name if name.lower().endswith(".gguf") else None


def llama_cpp_settings(env: Mapping[str, str]) -> LlamaCppSettings:
    """llama.cpp's settings from ``env``; raises ``SettingsError`` (also when no GGUF file is configured)."""
    ref = gguf_ref(env)
    if ref is None:
        raise SettingsError("no GGUF model configured: set RMAP2P_GGUF_MODEL to a .gguf file")
    n_ctx = _int(env, "MAX_MODEL_LEN", DEFAULT_LLAMA_CTX)
    assert n_ctx is not None
    threads = _int(env, "RMAP2P_LLM_THREADS", None)
    return LlamaCppSettings(model_path=str(Path(ref).expanduser()), n_ctx=n_ctx, n_threads=threads)


def vllm_argv(python: str, settings: VllmSettings, host: str, port: int) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server. Pure."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", settings.model,
        "--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}",
        "--max-model-len", str(settings.max_model_len),
        "--host", host,
        "--port", str(port),
        *[arg for m in settings.middleware for arg in ("--middleware", m)],
        *settings.extra_args,
    ]  # fmt: skip


# ------------------------------------------------------------ the choice


def choose(service: str, facts: Facts, env: Mapping[str, str]) -> Choice:
    """The engine that serves ``service`` on a machine with ``facts``. Pure."""
    if service not in (LLM, OCR):
        raise KeyError(service)
    gpu_reason = _vllm_gap(service, facts, env)
    if gpu_reason is None:
        settings = vllm_settings(service, env)
        return Choice(service, VLLM, f"{service}: vLLM on {facts.gpus[0].name}, model {settings.model}", settings)
    if service == LLM:
        return _llama_cpp(facts, env, gpu_reason)
    missing = _missing(RAPIDOCR, facts)
    if missing:
        return Choice(service, None, f"{service}: {gpu_reason}; and no CPU engine: {missing}")
    return Choice(service, RAPIDOCR, f"{service}: RapidOCR on CPU ({gpu_reason})")


def _vllm_gap(service: str, facts: Facts, env: Mapping[str, str]) -> str | None:
    """Why vLLM cannot serve ``service`` here, or None if it can."""
    if not facts.gpus:
        return "no CUDA GPU"
    best = max(g.vram_free_mb for g in facts.gpus)
    if best < MIN_VRAM_MB:
        return f"GPU has {best} MB VRAM free, vLLM needs at least {MIN_VRAM_MB}"
    missing = _missing(VLLM, facts)
    if missing:
        return missing
    try:
        settings = vllm_settings(service, env)
    except SettingsError as exc:
        return str(exc)
    # vLLM refuses to start unless its share of the GPU's total memory is free.
    if not any(g.vram_free_mb >= settings.gpu_memory_utilization * g.vram_total_mb for g in facts.gpus):
        gpu = max(facts.gpus, key=lambda g: g.vram_free_mb)
        return (
            f"vLLM wants {settings.gpu_memory_utilization:g} of {gpu.vram_total_mb} MB VRAM, {gpu.vram_free_mb} MB free"
        )
    if settings.model not in facts.present_models:
        return f"model {settings.model} is not on this machine (a directory or the Hugging Face cache; nodes do not download)"
    return None


def _llama_cpp(facts: Facts, env: Mapping[str, str], gpu_reason: str) -> Choice:
    missing = _missing(LLAMA_CPP, facts)
    if missing:
        return Choice(LLM, None, f"{LLM}: {gpu_reason}; and no CPU engine: {missing}")
    try:
        settings = llama_cpp_settings(env)
    except SettingsError as exc:
        return Choice(LLM, None, f"{LLM}: {gpu_reason}; llama.cpp: {exc}")
    ref = gguf_ref(env)
    if ref not in facts.present_models:
        return Choice(LLM, None, f"{LLM}: {gpu_reason}; llama.cpp: GGUF file {settings.model_path} not found")
    need = LLAMA_BASE_RAM_MB + facts.size_mb(ref or "")
    if facts.ram_available_mb is not None and facts.ram_available_mb < need:
        return Choice(LLM, None, f"{LLM}: {gpu_reason}; llama.cpp needs about {need} MB of RAM, {facts.ram_available_mb} MB available")
    return Choice(LLM, LLAMA_CPP, f"{LLM}: llama.cpp on CPU, model {settings.alias} ({gpu_reason})", settings)


def _missing(engine: str, facts: Facts) -> str | None:
    missing = [m for m in MODULES[engine] if m not in facts.modules]
    if not missing:
        return None
    return f"{engine} not installed (module {', '.join(missing)} missing; {INSTALL_HINT[engine]})"


# ------------------------------------------------------------ looking at the machine


def gpus_from(infos: Iterable[Any]) -> tuple[Gpu, ...]:
    """``Gpu`` facts from the daemon's ``rmap2p.hardware.GpuInfo`` records (name, VRAM in bytes).

    The daemon detects its hardware once (NVML) and hands the GPUs down:
    services/ does not look at the machine's hardware itself.
    """
    mb = 1024 * 1024
    return tuple(Gpu(str(g.name), int(g.vram_total) // mb, int(g.vram_free) // mb) for g in infos)


def gather(env: Mapping[str, str], gpus: Sequence[Gpu] = ()) -> Facts:
    """The facts ``choose`` needs about this machine, whose GPUs are ``gpus`` (none: CPU engines only)."""
    modules = frozenset(m for ms in MODULES.values() for m in ms if module_present(m))
    refs = {gguf_ref(env)} | {vllm_model for vllm_model in _vllm_refs(env)}
    present = frozenset(r for r in refs if r is not None and model_present(r, env))
    sizes = tuple((r, os.path.getsize(r) // (1024 * 1024)) for r in present if os.path.isfile(r))
    import psutil

    ram = int(psutil.virtual_memory().available // (1024 * 1024))
    return Facts(gpus=tuple(gpus), modules=modules, present_models=present, ram_available_mb=ram, model_sizes_mb=sizes)


def _vllm_refs(env: Mapping[str, str]) -> list[str]:
    refs = []
    for service in (LLM, OCR):
        try:
            refs.append(vllm_settings(service, env).model)
        except SettingsError:
            pass
    return refs


def probe(service: str, env: Mapping[str, str], gpus: Sequence[Gpu] = ()) -> Choice:
    """``choose`` on this machine."""
    return choose(service, gather(env, gpus), env)


def module_present(name: str) -> bool:
    """Whether top-level module ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def model_present(ref: str, env: Mapping[str, str]) -> bool:
    """A file or directory at ``ref``, or hub name ``ref`` in the local Hugging Face cache."""
    path = Path(ref).expanduser()
    if path.exists():
        return True
    if ref.startswith(("/", ".", "~")) or ref.count("/") != 1:
        return False
    hub = env.get("HF_HUB_CACHE") or os.path.join(env.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    snapshots = Path(hub) / ("models--" + ref.replace("/", "--")) / "snapshots"
    try:
        return any(p.is_dir() for p in snapshots.iterdir())
    except OSError:
        return False
