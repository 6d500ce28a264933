"""llm-inference on CPU with a real (tiny) model: llama.cpp serves a GGUF the test builds.

The model (``tests/tiny_gguf.py``) has random weights, so its text is
gibberish, but everything around it is real: llama.cpp loads and runs it,
chat completions and SSE streams come back through llama-cpp-python's
OpenAI-compatible server, through real gateways token by token, and notes-coa
gets its notes from it through the overlay.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from gateways import gateways
from ml import need_modules
from procs import pid_gone
from tiny_gguf import write_tiny_llama

from services.engine_choice import LLAMA_CPP, MODULES
from services.runners import make_runner
from services.runners.process import PROJECT_ROOT, ProcessRunner
from services.supervisor import RestartPolicy

pytestmark = pytest.mark.asyncio(loop_scope="module")
NEEDS = (*MODULES[LLAMA_CPP], "gguf")
"""llama-cpp-python[server] (ml extra) and gguf (test extra)."""

POLICY = RestartPolicy(ready_timeout=120.0, check_interval=0.2, backoff_initial=0.2, backoff_max=1.0, max_failures=2)


async def healthy(runner: ProcessRunner, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while await runner.health() != "healthy":
        assert runner.failed is None, runner.failed
        assert time.monotonic() < deadline, f"not ready: {runner.supervisor.state}"
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def llm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProcessRunner]:
    need_modules(*NEEDS)
    model = write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")
    env = {"RMAP2P_GGUF_MODEL": str(model), "RMAP2P_LLM_THREADS": "1", "MAX_MODEL_LEN": "2048"}
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "l", env, policy=POLICY, backend="llama.cpp")
    await runner.start()
    try:
        await healthy(runner)
        yield runner
    finally:
        await runner.stop()


def url(runner: ProcessRunner, path: str) -> str:
    return f"http://127.0.0.1:{runner.port}{path}"


def chat(content: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}


async def read_sse(resp: aiohttp.ClientResponse, t0: float) -> list[tuple[float, str]]:
    """(seconds since t0 when the event's last byte arrived, its data) for every event, as bytes come in."""
    events: list[tuple[float, str]] = []
    buffer = b""
    async for chunk in resp.content.iter_any():
        now = time.perf_counter() - t0
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in raw.decode().split("\n") if line.startswith("data:")]
            if data:
                events.append((now, "\n".join(data)))
    return events


def deltas(events: list[tuple[float, str]]) -> str:
    text = ""
    for _, data in events[:-1]:
        choice = json.loads(data)["choices"][0]
        text += choice["delta"].get("content") or ""
    return text


async def test_health_and_models_name_the_loaded_model(llm: ProcessRunner) -> None:
    assert llm.loaded_models == ("tiny-llama",)
    async with aiohttp.ClientSession() as client:
        async with client.get(url(llm, "/health")) as resp:
            health = await resp.json()
        async with client.get(url(llm, "/v1/models")) as resp:
            models = await resp.json()
    assert health["status"] == "ok" and health["backend"] == "llama.cpp" and health["model"] == "tiny-llama"
    assert health["n_ctx"] == 2048
    assert [m["id"] for m in models["data"]] == ["tiny-llama"]


async def test_a_chat_completion_and_its_stream_come_back(llm: ProcessRunner) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(url(llm, "/v1/chat/completions"), json=chat("Hello there", 24)) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        async with client.post(url(llm, "/v1/chat/completions"), json=chat("Hello there", 24, stream=True)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_sse(resp, time.perf_counter())
    text = doc["choices"][0]["message"]["content"]
    assert doc["model"] == "tiny-llama" and doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 24 and doc["usage"]["prompt_tokens"] > len("Hello there")
    assert text and all(32 <= ord(c) < 127 for c in text), "the tiny model emits printable ASCII"
    assert events[-1][1] == "[DONE]"
    assert json.loads(events[-2][1])["choices"][0]["finish_reason"] == "length"
    assert deltas(events) == text, "greedy decoding: the stream spells the same completion"


async def test_a_legacy_completion_comes_back(llm: ProcessRunner) -> None:
    async with aiohttp.ClientSession() as client:
        payload = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.0}
        async with client.post(url(llm, "/v1/completions"), json=payload) as resp:
            assert resp.status == 200
            doc = await resp.json()
    assert doc["usage"]["completion_tokens"] == 8 and doc["choices"][0]["text"]


async def test_a_stream_passes_through_two_gateways_token_by_token(llm: ProcessRunner) -> None:
    async with gateways(["r", "l"]) as pool:
        assert llm.port is not None
        pool.advertise("l", {"llm-inference": llm.port})
        async with aiohttp.ClientSession() as client:
            t0 = time.perf_counter()
            # the client talks to r; r forwards to l's gateway, which forwards to the runner
            async with client.post(pool.urls["r"] + "/api/service/llm-inference/v1/chat/completions", json=chat("Tell me a story", 400, stream=True)) as resp:
                assert resp.status == 200
                assert resp.headers["X-Rmap2p-Node"] == "l"
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(resp, t0)
    assert events[-1][1] == "[DONE]"
    tokens = [e for e in events[:-1] if json.loads(e[1])["choices"][0]["delta"].get("content")]
    assert len(tokens) >= 390, "one event per token"
    first, last = tokens[0][0], tokens[-1][0]
    arrivals = len({round(t, 3) for t, _ in tokens})
    print(f"400-token stream through 2 gateways: first token at {first * 1000:.0f} ms, last at {last * 1000:.0f} ms, {arrivals} distinct arrival times")
    assert first < 0.25 * last, f"the first token arrived at {first:.3f} s, the generation ended at {last:.3f} s: buffered"
    assert arrivals > 40, "tokens arrived spread over the generation, not in a few bursts"


async def test_notes_come_from_the_llm_through_the_overlay(llm: ProcessRunner) -> None:
    async with gateways(["r", "l", "c"]) as pool:
        assert llm.port is not None
        pool.advertise("l", {"llm-inference": llm.port})
        notes = make_runner(SimpleNamespace(name="notes-coa"), "127.0.0.1", 0, "c", {"RMAP2P_GATEWAY": pool.urls["c"]}, policy=POLICY)
        await notes.start()
        try:
            await healthy(notes, 30.0)
            assert notes.port is not None
            pool.advertise("c", {"notes-coa": notes.port})
            case = "Client is a single parent, owes 1,200 in rent arrears and 300 council tax; income is universal credit."
            async with aiohttp.ClientSession() as client, client.post(pool.urls["r"] + "/api/service/notes-coa/notes", json={"case_text": case}) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Rmap2p-Node"] == "c"
                doc = await resp.json()
        finally:
            await notes.stop()
    assert doc["model"] == "tiny-llama" and doc["prompt"] == "notes-coa/v1"
    assert isinstance(doc["notes"], str) and len(doc["notes"]) > 100, "512 tokens of (gibberish) notes"


async def test_a_file_llama_cpp_cannot_load_is_not_retried(tmp_path: Path) -> None:
    need_modules(*NEEDS)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    failed: list[str] = []
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "l", {"RMAP2P_GGUF_MODEL": str(bad)},
                         policy=POLICY, backend="llama.cpp", on_failed=lambda s, r: failed.append(r))
    await runner.start()  # the port is announced before the model loads
    try:
        deadline = time.monotonic() + 60.0
        while runner.failed is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await runner.stop()
    assert runner.failed is not None and re.search(r"llama\.cpp cannot load .*broken\.gguf", runner.failed)
    assert runner.supervisor.runs == 1 and failed == [runner.failed]


async def test_two_streams_at_once_both_run_to_the_end(llm: ProcessRunner) -> None:
    """llama-cpp-python's default lets a new request cut a stream short; in a pool two clients are two users."""
    async with aiohttp.ClientSession() as client:

        async def stream(prompt: str) -> list[tuple[float, str]]:
            async with client.post(url(llm, "/v1/chat/completions"), json=chat(prompt, 400, stream=True)) as resp:
                assert resp.status == 200
                return await read_sse(resp, time.perf_counter())

        first = asyncio.create_task(stream("First client"))
        await asyncio.sleep(0.03)  # the first is streaming when the second arrives
        second = asyncio.create_task(stream("Second client"))
        results = await asyncio.gather(first, second)
    assert results[0][-1][0] > 0.03, "the streams overlapped"
    for events in results:
        assert events[-1][1] == "[DONE]"
        assert json.loads(events[-2][1])["choices"][0]["finish_reason"] == "length", "ran to max_tokens, not interrupted"
        assert sum(1 for _, d in events[:-1] if json.loads(d)["choices"][0]["delta"].get("content")) >= 395


async def test_a_killed_server_comes_back_on_its_port(tmp_path: Path) -> None:
    need_modules(*NEEDS)
    model = write_tiny_llama(tmp_path / "tiny-llama.gguf", seed=1)
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "l", {"RMAP2P_GGUF_MODEL": str(model)},
                         policy=POLICY, backend="llama.cpp")
    await runner.start()
    try:
        await healthy(runner)
        port, pid = runner.port, runner.supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60.0
        while runner.supervisor.pid in (None, pid) or await runner.health() != "healthy":
            assert time.monotonic() < deadline, runner.supervisor.state
            await asyncio.sleep(0.2)
        assert runner.port == port and runner.loaded_models == ("tiny-llama",)
        async with aiohttp.ClientSession() as client, client.post(url(runner, "/v1/chat/completions"), json=chat("again", 4)) as resp:
            assert resp.status == 200
    finally:
        await runner.stop()


async def test_the_server_exits_when_its_daemon_dies(tmp_path: Path) -> None:
    """The daemon holds the child's stdin; SIGKILL it and the child reads EOF and exits (no orphan keeps the port)."""
    need_modules(*NEEDS)
    await asyncio.to_thread(_exits_with_its_daemon, tmp_path)


def _exits_with_its_daemon(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny-llama.gguf")
    env = {**os.environ, "RMAP2P_GGUF_MODEL": str(model), "PYTHONPATH": PROJECT_ROOT}
    daemon = subprocess.Popen(
        [sys.executable, "-c", (
         "import subprocess, sys\n"
         "child = subprocess.Popen([sys.executable, '-m', 'services.runners.llamacpp', '--service', 'llm-inference',"
         " '--port', '0', '--exit-on-stdin-eof'], stdin=subprocess.PIPE)\n"
         "print(child.pid, flush=True)\n"
         "child.wait()\n")],
        env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        child = int(daemon.stdout.readline())
        time.sleep(3.0)  # announced and loading or serving
        assert Path(f"/proc/{child}").exists()
        daemon.kill()
        daemon.wait()
        assert pid_gone(child, timeout=20.0), "the llama.cpp child outlived its daemon"
    finally:
        daemon.kill()
        daemon.wait()


async def test_llama_cpp_reports_how_far_it_loaded_the_model(tmp_path: Path) -> None:
    """llama.cpp's own tensor-loading progress reaches the child's reporter (services.load_progress).

    Async only because the module's tests share one event loop (``pytestmark``); the load runs inline.
    """
    need_modules(*NEEDS)
    from services.engine_choice import llama_cpp_settings
    from services.load_progress import Reporter
    from services.runners.llamacpp import build_app

    lines: list[str] = []
    reporter = Reporter(lines.append)
    settings = llama_cpp_settings({"RMAP2P_GGUF_MODEL": str(write_tiny_llama(tmp_path / "m.gguf")), "MAX_MODEL_LEN": "256"})
    build_app(settings, reporter.report)
    figures = [int(line.split()[1]) for line in lines]
    assert lines[0] == "RMAP2P-PROGRESS 0" and figures[-1] == 100, lines
    assert figures == sorted(set(figures)) and any(0 < f < 100 for f in figures), figures
    # Outside the load the library's own defaults are back: no callback left behind.
    import llama_cpp.llama_cpp as lib

    assert not lib.llama_model_default_params().progress_callback
