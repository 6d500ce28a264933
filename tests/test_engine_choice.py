"""Which engine serves llm-inference and vision-ocr: pure choice from hardware facts and environment, and vLLM's command line."""

from __future__ import annotations

from typing import Any

import pytest

from rmap2p.hardware import GpuInfo
from services import engine_choice as ec
from services.engine_choice import Facts, Gpu, LlamaCppSettings, VllmSettings

H200 = Gpu("NVIDIA H200", 143_771, 140_000)
SMALL = Gpu("tiny card", 2_000, 1_500)
ALL = frozenset(m for ms in ec.MODULES.values() for m in ms)
NO_VLLM = ALL - {"vllm"}
CPU_ONLY = ALL - {"vllm", "llama_cpp"}
LLAMA = "meta-llama/Llama-3.2-3B-Instruct"
GGUF = "/models/tiny.gguf"
VISION = "Qwen/Qwen2-VL-2B-Instruct"


def facts(gpus: tuple[Gpu, ...] = (), modules: frozenset[str] = ALL, present: tuple[str, ...] = (LLAMA, GGUF, VISION),
          ram: int | None = 16_000) -> Facts:
    return Facts(gpus=gpus, modules=modules, present_models=frozenset(present), ram_available_mb=ram, model_sizes_mb=((GGUF, 2000),))


@pytest.mark.parametrize(
    ("service", "f", "env", "backend", "why"),
    [
        # CUDA GPU, vllm, model present: vLLM for both
        ("llm-inference", facts((H200,)), {"RMAP2P_GGUF_MODEL": GGUF}, "vllm", "vLLM on NVIDIA H200"),
        ("vision-ocr", facts((H200,)), {}, "vllm", f"model {VISION}"),
        # no GPU: llama.cpp with the GGUF file; RapidOCR
        ("llm-inference", facts(), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "no CUDA GPU"),
        ("llm-inference", facts(), {"MODEL_NAME": GGUF}, "llama.cpp", "model tiny"),
        ("vision-ocr", facts(), {}, "rapidocr", "no CUDA GPU"),
        # GPU but no vllm package: the CPU engines, saying why
        ("llm-inference", facts((H200,), NO_VLLM), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "vllm not installed"),
        ("vision-ocr", facts((H200,), NO_VLLM), {}, "rapidocr", "vllm not installed"),
        # GPU with too little free VRAM, or less free than vLLM's share
        ("llm-inference", facts((SMALL,)), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "1500 MB VRAM free"),
        ("llm-inference", facts((Gpu("busy", 24_000, 10_000),)), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp",
         "vLLM wants 0.5 of 24000 MB VRAM, 10000 MB free"),
        ("llm-inference", facts((Gpu("busy", 24_000, 10_000),)), {"GPU_MEMORY_UTILIZATION": "0.4"}, "vllm", "vLLM on busy"),
        # RAM for llama.cpp: the file's size plus its base
        ("llm-inference", facts(ram=2200), {"RMAP2P_GGUF_MODEL": GGUF}, None, "needs about 2300 MB of RAM, 2200 MB available"),
        ("llm-inference", facts(ram=None), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "no CUDA GPU"),
        # GPU, vllm, but the model is not on this machine (nodes do not download)
        ("llm-inference", facts((H200,), present=(GGUF,)), {"RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "is not on this machine"),
        ("llm-inference", facts((H200,), present=()), {}, None, "no GGUF model configured"),
        # GPU, vllm, a bad setting: not vLLM, and the reason names the variable
        ("llm-inference", facts((H200,)), {"GPU_MEMORY_UTILIZATION": "1.5", "RMAP2P_GGUF_MODEL": GGUF}, "llama.cpp", "GPU_MEMORY_UTILIZATION='1.5' must be in (0, 1]"),
        ("llm-inference", facts((H200,)), {"MAX_MODEL_LEN": "lots"}, None, "MAX_MODEL_LEN='lots' is not an integer"),
        # no GPU and nothing for the CPU either
        ("llm-inference", facts(modules=CPU_ONLY), {"RMAP2P_GGUF_MODEL": GGUF}, None, "llama.cpp not installed"),
        ("llm-inference", facts(), {}, None, "set RMAP2P_GGUF_MODEL"),
        ("llm-inference", facts(present=()), {"RMAP2P_GGUF_MODEL": GGUF}, None, f"GGUF file {GGUF} not found"),
        ("llm-inference", facts(), {"MODEL_NAME": LLAMA}, None, "no GGUF model configured"),
        ("vision-ocr", facts(modules=frozenset({"llama_cpp"})), {}, None, "rapidocr not installed"),
    ],
)
def test_choose(service: str, f: Facts, env: dict[str, str], backend: str | None, why: str) -> None:
    choice = ec.choose(service, f, env)
    assert choice.backend == backend, choice.reason
    assert why in choice.reason
    assert choice.reason.startswith(service)
    assert (choice.settings is None) == (backend in (None, "rapidocr"))


def test_choose_knows_only_its_two_services() -> None:
    with pytest.raises(KeyError):
        ec.choose("rag-embeddings", facts(), {})


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        ("llm-inference", {}, VllmSettings(LLAMA, 0.5, 4096)),
        ("llm-inference", {"MODEL_NAME": "/srv/m", "GPU_MEMORY_UTILIZATION": "0.85", "MAX_MODEL_LEN": "8192"}, VllmSettings("/srv/m", 0.85, 8192)),
        ("llm-inference", {"MODEL_NAME": "  ", "GPU_MEMORY_UTILIZATION": " ", "RMAP2P_VLLM_ARGS": "--dtype half --tensor-parallel-size 2"},
         VllmSettings(LLAMA, 0.5, 4096, ("--dtype", "half", "--tensor-parallel-size", "2"))),
        # vision-ocr reads its own variables, never the LLM's
        ("vision-ocr", {"MODEL_NAME": LLAMA, "GPU_MEMORY_UTILIZATION": "0.9"}, VllmSettings(VISION, 0.4, 4096, middleware=(ec.OCR_MIDDLEWARE,))),
        ("vision-ocr", {"RMAP2P_VISION_MODEL": "llava-hf/llava-1.5-7b-hf", "RMAP2P_VISION_GPU_MEMORY_UTILIZATION": "0.3",
                        "RMAP2P_VISION_MAX_MODEL_LEN": "2048"}, VllmSettings("llava-hf/llava-1.5-7b-hf", 0.3, 2048, middleware=(ec.OCR_MIDDLEWARE,))),
    ],
)
def test_vllm_settings(service: str, env: dict[str, str], expected: VllmSettings) -> None:
    assert ec.vllm_settings(service, env) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"GPU_MEMORY_UTILIZATION": "0"}, {"GPU_MEMORY_UTILIZATION": "-0.5"}, {"GPU_MEMORY_UTILIZATION": "half"},
        {"MAX_MODEL_LEN": "0"}, {"MAX_MODEL_LEN": "4k"}, {"RMAP2P_VLLM_ARGS": "--unterminated 'quote"},
    ],
)
def test_vllm_settings_refuse_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ec.SettingsError) as err:
        ec.vllm_settings("llm-inference", env)
    assert next(iter(env)) in str(err.value)


@pytest.mark.parametrize(
    ("settings", "host", "port", "tail"),
    [
        (VllmSettings(LLAMA, 0.5, 4096), "127.0.0.1", 8105,
         ["--model", LLAMA, "--gpu-memory-utilization", "0.5", "--max-model-len", "4096", "--host", "127.0.0.1", "--port", "8105"]),
        (VllmSettings("/srv/models/llama", 0.9, 131072), "0.0.0.0", 40001,
         ["--model", "/srv/models/llama", "--gpu-memory-utilization", "0.9", "--max-model-len", "131072", "--host", "0.0.0.0", "--port", "40001"]),
        (VllmSettings(VISION, 0.35, 2048, ("--limit-mm-per-prompt", "image=4"), ("services.runners.vllm_ocr.ocr_middleware",)), "::1", 9,
         ["--model", VISION, "--gpu-memory-utilization", "0.35", "--max-model-len", "2048", "--host", "::1", "--port", "9",
          "--middleware", "services.runners.vllm_ocr.ocr_middleware", "--limit-mm-per-prompt", "image=4"]),
    ],
)
def test_vllm_argv(settings: VllmSettings, host: str, port: int, tail: list[str]) -> None:
    argv = ec.vllm_argv("/venv/bin/python", settings, host, port)
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[3:] == tail


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RMAP2P_GGUF_MODEL": "/m/a.gguf"}, LlamaCppSettings("/m/a.gguf", 2048)),
        ({"MODEL_NAME": "/m/b.GGUF", "MAX_MODEL_LEN": "512", "RMAP2P_LLM_THREADS": "2"}, LlamaCppSettings("/m/b.GGUF", 512, 2)),
        ({"RMAP2P_GGUF_MODEL": "/m/a.gguf", "MODEL_NAME": "/m/b.gguf"}, LlamaCppSettings("/m/a.gguf", 2048)),
    ],
)
def test_llama_cpp_settings(env: dict[str, str], expected: LlamaCppSettings) -> None:
    assert ec.llama_cpp_settings(env) == expected
    assert expected.alias in ("a", "b")


def test_gather_finds_files_and_hub_cache_entries(tmp_path: Any) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    snapshot = tmp_path / "hub" / "models--org--vision" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    env = {"RMAP2P_GGUF_MODEL": str(gguf), "HF_HUB_CACHE": str(tmp_path / "hub"), "RMAP2P_VISION_MODEL": "org/vision", "MODEL_NAME": "org/absent"}
    f = ec.gather(env, gpus=ec.gpus_from([GpuInfo("NVIDIA H200", H200.vram_total_mb * 2**20, H200.vram_free_mb * 2**20)]))
    assert f.present_models == {str(gguf), "org/vision"}
    assert f.model_sizes_mb == ((str(gguf), 0),) and f.ram_available_mb is not None and f.ram_available_mb > 0
    assert f.gpus == (H200,)
    assert ec.model_present("org/absent", env) is False and ec.model_present("../nowhere", env) is False


def test_capabilities_asks_the_engine_choice_for_its_two_services() -> None:
    from services.capabilities import PROBED, HostFacts, can_run

    host = HostFacts(ram_available_mb=16_000, modules=frozenset(), engines=facts())
    assert can_run("llm-inference", host, {"RMAP2P_GGUF_MODEL": GGUF}) == (True, "llm-inference: llama.cpp on CPU, model tiny (no CUDA GPU)")
    assert can_run("llm-inference", host, {})[0] is False
    assert can_run("vision-ocr", HostFacts(16_000, frozenset(), engines=facts((H200,))), {})[0] is True
    assert can_run("vision-ocr", HostFacts(16_000, frozenset()), {}) == (False, "vision-ocr: its engines were not probed")
    assert can_run("notes-coa", HostFacts(0, frozenset()), {})[0] is True
    assert {"llm-inference", "vision-ocr", "notes-coa"} <= set(PROBED)
