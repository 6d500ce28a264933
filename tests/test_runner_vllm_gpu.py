"""llm-inference on the real vLLM, on a CUDA GPU machine: runs where one is, skips (saying why) elsewhere.

Needs a CUDA GPU (NVML), the ``gpu`` extra (vllm) and a model on disk, named
by ``RMAP2P_TEST_VLLM_MODEL`` (a directory or a hub name in the local Hugging
Face cache; nodes do not download). Everything else is what a node does: the
engine choice picks vLLM, the launcher execs vLLM's OpenAI server with the
seeds' settings, the supervisor waits for its ``/health``, the runner learns
the model from ``/v1/models``, and a stream passes through two gateways.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from types import SimpleNamespace

import aiohttp
import pytest
from gateways import gateways

from rmap2p.hardware import detect_gpus
from services import engine_choice as ec
from services.runners import make_runner
from services.supervisor import RestartPolicy

MODEL = os.environ.get("RMAP2P_TEST_VLLM_MODEL", "").strip()


def _gap() -> str | None:
    if not MODEL:
        return "RMAP2P_TEST_VLLM_MODEL (a model on disk for vLLM) is not set"
    env = {**os.environ, "MODEL_NAME": MODEL, "GPU_MEMORY_UTILIZATION": os.environ.get("GPU_MEMORY_UTILIZATION", "0.5")}
    choice = ec.probe("llm-inference", env, ec.gpus_from(detect_gpus()))
    return None if choice.backend == ec.VLLM else choice.reason


async def test_vllm_serves_chat_and_streams_through_the_gateways() -> None:
    gap = _gap()
    if gap is not None:
        pytest.skip(f"no vLLM here: {gap}")
    env = {"MODEL_NAME": MODEL, "GPU_MEMORY_UTILIZATION": os.environ.get("GPU_MEMORY_UTILIZATION", "0.5"), "MAX_MODEL_LEN": "2048"}
    policy = RestartPolicy(ready_timeout=900.0, check_interval=1.0, max_failures=1, stop_timeout=60.0)
    runner = make_runner(SimpleNamespace(name="llm-inference"), "127.0.0.1", 0, "g", env, policy=policy, gpus=ec.gpus_from(detect_gpus()))
    await runner.start()
    try:
        deadline = time.monotonic() + 900.0
        while await runner.health() != "healthy":
            assert runner.failed is None, runner.failed
            assert time.monotonic() < deadline
            await asyncio.sleep(1.0)
        assert runner.loaded_models == (MODEL,)
        async with gateways(["r", "g"]) as pool:
            assert runner.port is not None
            pool.advertise("g", {"llm-inference": runner.port}, worker_type="gpu")
            payload = {"model": MODEL, "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
                       "max_tokens": 200, "temperature": 0.0, "stream": True}
            t0 = time.perf_counter()
            times: list[float] = []
            text = ""
            async with aiohttp.ClientSession() as client, client.post(
                pool.urls["r"] + "/api/service/llm-inference/v1/chat/completions", json=payload
            ) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    data = line.decode().strip()
                    if data.startswith("data:") and data != "data: [DONE]":
                        delta = json.loads(data[5:])["choices"][0]["delta"].get("content") or ""
                        if delta:
                            times.append(time.perf_counter() - t0)
                            text += delta
        print(f"vLLM stream through 2 gateways: {len(times)} chunks, first at {times[0] * 1000:.0f} ms, last at {times[-1] * 1000:.0f} ms")
        assert text.strip() and len(times) > 20
        assert times[0] < 0.5 * times[-1], "the stream was buffered"
    finally:
        await runner.stop()
