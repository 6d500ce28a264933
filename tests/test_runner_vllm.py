"""The vLLM runner at its HTTP boundary, against a STAND-IN for the GPU-only vLLM server.

No CUDA GPU here, so no real vLLM: ``tests/vllm_standin`` is a package named
``vllm`` whose ``vllm.entrypoints.openai.api_server`` takes vLLM's flags,
records them, and speaks vLLM's ``/health`` (200, empty body) and
``/v1/models``. Everything on our side is real: the launcher child computes the
command line from the environment, announces the port and ``exec``s it; the
supervisor checks readiness, restarts, gives up; the runner learns the
served model from ``/v1/models``. With a GPU and vLLM installed, the same
runner runs the real server (tested there when such a machine is available).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from ml import need_modules
from ocr_images import pdf, words
from procs import pid_gone

from services.engine_choice import module_present, vllm_argv, vllm_settings
from services.runner import RunnerError
from services.runners import make_runner
from services.runners.process import PROJECT_ROOT
from services.runners.vllm import VllmRunner
from services.supervisor import RestartPolicy

STANDIN = str(Path(__file__).resolve().parent / "vllm_standin")
FAST = RestartPolicy(backoff_initial=0.2, backoff_max=1.0, max_failures=3, ready_timeout=30.0, check_interval=0.2, stop_timeout=5.0)

pytestmark = pytest.mark.skipif(module_present("vllm"), reason="the real vLLM is installed: the stand-in would be shadowed")


def standin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    need_modules("fastapi", "uvicorn")  # the stand-in serves with them, as vLLM does
    return {
        "PYTHONPATH": os.pathsep.join([STANDIN, PROJECT_ROOT]),
        "STANDIN_ARGV_FILE": str(tmp_path / "argv.jsonl"),
        "MODEL_NAME": "org/llama-test",
        "GPU_MEMORY_UTILIZATION": "0.6",
        "MAX_MODEL_LEN": "1024",
        **extra,
    }


def recorded(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_vllm_runs_supervised_with_its_command_line_and_reports_its_model(tmp_path: Path) -> None:
    env = standin_env(tmp_path, STANDIN_LOAD_SECONDS="1.0")
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "g1", env, policy=FAST, backend="vllm")
    assert isinstance(runner, VllmRunner)
    try:
        await runner.start()
        assert await runner.health() == "starting", "loading: nothing listens yet"
        assert runner.loaded_models == ()
        seen: set[int] = set()

        async def loaded_some() -> bool:
            if runner.load_progress is not None:
                seen.add(runner.load_progress)
            return bool(seen - {0, 100})

        assert await until(loaded_some, 20.0), "vLLM's shard progress is read from its log"

        async def healthy() -> bool:
            return await runner.health() == "healthy"

        assert await until(healthy, 20.0)
        assert runner.loaded_models == ("org/llama-test",)
        assert runner.load_progress is None, "ready: nothing left to load"
        port = runner.port
        assert port is not None
        [run] = recorded(tmp_path)
        expected = vllm_argv(sys.executable, vllm_settings("llm-inference", env), "127.0.0.1", port)
        assert run["argv"] == expected[3:]
        pid = runner.supervisor.pid
        assert pid == run["pid"], "the launcher exec'd: the supervised process is the server itself"
        assert "vllm.entrypoints.openai.api_server" in cmdline(pid)

        os.kill(pid, signal.SIGKILL)  # a crash (OOM kill, CUDA error...)

        async def back() -> bool:
            return runner.supervisor.pid not in (None, pid) and await runner.health() == "healthy"

        assert await until(back, 20.0), runner.supervisor.state
        assert runner.port == port, "restarted on the same port"
        assert runner.supervisor.runs == 2
        assert runner.loaded_models == ("org/llama-test",)
        assert [r["argv"] for r in recorded(tmp_path)] == [expected[3:]] * 2
    finally:
        await runner.stop()
    assert runner.supervisor.pid is None
    assert runner.loaded_models == ()


async def test_vision_ocr_on_vllm_uses_its_own_variables(tmp_path: Path) -> None:
    env = standin_env(tmp_path, RMAP2P_VISION_MODEL="org/vision-test", RMAP2P_VISION_GPU_MEMORY_UTILIZATION="0.3")
    runner = make_runner(SimpleNamespace(name="vision-ocr"), "127.0.0.1", 0, "g1", env, policy=FAST, backend="vllm")
    try:
        await runner.start()

        async def healthy() -> bool:
            return await runner.health() == "healthy"

        assert await until(healthy, 20.0)
        assert runner.loaded_models == ("org/vision-test",)
        [run] = recorded(tmp_path)
        assert run["argv"][:6] == ["--model", "org/vision-test", "--gpu-memory-utilization", "0.3", "--max-model-len", "4096"]
        assert run["argv"][-2:] == ["--middleware", "services.runners.vllm_ocr.ocr_middleware"]
    finally:
        await runner.stop()


async def test_vision_ocr_on_vllm_answers_ocr_page_by_page(tmp_path: Path) -> None:
    """``POST /ocr`` through the middleware inside the (stand-in) vLLM server: pages out, chat requests with images in."""
    need_modules("rapidocr", "onnxruntime", "PIL", "pypdfium2")
    env = standin_env(tmp_path, RMAP2P_VISION_MODEL="org/vision-test")
    runner = make_runner(SimpleNamespace(name="vision-ocr"), "127.0.0.1", 0, "g1", env, policy=FAST, backend="vllm")
    try:
        await runner.start()

        async def healthy() -> bool:
            return await runner.health() == "healthy"

        assert await until(healthy, 30.0)
        form = aiohttp.FormData()
        form.add_field("file", pdf([["Final notice 2024"], ["Pay 120 by Friday"]]), filename="notice.pdf", content_type="application/pdf")
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{runner.port}/ocr", data=form) as resp:
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
            async with client.post(f"http://127.0.0.1:{runner.port}/ocr", data=b"", headers={"Content-Type": "image/png"}) as resp:
                assert resp.status == 400 and "empty upload" in (await resp.json())["error"]
            async with client.post(f"http://127.0.0.1:{runner.port}/ocr", data=b"junk", headers={"Content-Type": "image/png"}) as resp:
                assert resp.status == 415
    finally:
        await runner.stop()
    assert doc["pages"] == 2 and doc["backend"] == "vllm" and doc["model"] == "org/vision-test"
    assert [words(t) for t in doc["page_texts"]] == [["Final", "notice", "2024"], ["Pay", "120", "by", "Friday"]]


async def test_a_bad_setting_fails_at_start_without_retrying(tmp_path: Path) -> None:
    env = standin_env(tmp_path, GPU_MEMORY_UTILIZATION="1.5")
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "g1", env, policy=FAST, backend="vllm")
    with pytest.raises(RunnerError, match=r"GPU_MEMORY_UTILIZATION='1.5' must be in \(0, 1\]"):
        await runner.start()
    assert runner.supervisor.runs == 1 and runner.failed is not None
    assert recorded(tmp_path) == [], "vLLM was never started"


async def test_without_vllm_installed_it_cannot_run(tmp_path: Path) -> None:
    env = {**standin_env(tmp_path), "PYTHONPATH": PROJECT_ROOT}
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "g1", env, policy=FAST, backend="vllm")
    with pytest.raises(RunnerError, match="vllm is not installed"):
        await runner.start()


async def test_a_server_that_keeps_dying_is_given_up(tmp_path: Path) -> None:
    failed: list[tuple[str, str]] = []
    env = standin_env(tmp_path, STANDIN_EXIT="1")
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "g1", env, policy=FAST,
                         on_failed=lambda s, r: failed.append((s, r)), backend="vllm")
    try:
        await runner.start()

        async def gave_up() -> bool:
            return bool(failed)

        assert await until(gave_up, 20.0)
    finally:
        await runner.stop()
    [(service, reason)] = failed
    assert service == "llm-inference" and "3 consecutive failures" in reason and "exiting as told" in reason
    assert await runner.health() == "unhealthy" and runner.port is None
    assert len(recorded(tmp_path)) == 3


def test_the_server_dies_with_the_daemon_that_started_it(tmp_path: Path) -> None:
    """SIGKILL the parent (as a daemon killed hard): the exec'd server gets SIGTERM from the kernel."""
    env = {**os.environ, **standin_env(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", (
         "import subprocess, sys; subprocess.Popen([sys.executable, '-m', 'services.runners.vllm', '--service', 'llm-inference',"
         " '--port', '0']).wait()")],
        env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20.0
        while not recorded(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        [run] = recorded(tmp_path)
        server = run["pid"]
        assert Path(f"/proc/{server}").exists()
        parent.kill()
        parent.wait()
        assert pid_gone(server, timeout=10.0), "the server outlived its parent"
    finally:
        parent.kill()
        parent.wait()
