"""notes-coa without an LLM in the pool: a clear 503 naming the gap; bad input and bad prompts.

The path with a real (tiny) LLM behind the gateway is in ``test_runner_llm.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from gateways import gateways

from services.runner import RunnerError
from services.runners import make_runner
from services.runners.notes import PROMPT_FILE, load_prompt
from services.runners.process import ProcessRunner
from services.supervisor import RestartPolicy

FAST = RestartPolicy(backoff_initial=0.2, backoff_max=1.0, max_failures=2, ready_timeout=30.0, check_interval=0.2)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def started(env: dict[str, str]) -> ProcessRunner:
    runner = make_runner(SimpleNamespace(name="notes-coa"), "127.0.0.1", 0, "c1", env, policy=FAST)
    await runner.start()
    deadline = time.monotonic() + 30.0
    while await runner.health() != "healthy":
        assert time.monotonic() < deadline, runner.supervisor.state
        await asyncio.sleep(0.1)
    return runner


def test_the_shipped_prompt_is_valid_data() -> None:
    prompt = load_prompt(PROMPT_FILE)
    messages = prompt.messages("Owes {rent} of 1200")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Owes {rent} of 1200" in messages[1]["content"], "braces in the case text survive"
    assert "Course of action" in prompt.system


async def test_no_gateway_answering_is_a_503_naming_the_gap() -> None:
    runner = await started({"RMAP2P_GATEWAY": f"127.0.0.1:{closed_port()}"})
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{runner.port}/health") as resp:
                health = await resp.json()
            assert health["prompt"] == "notes-coa/v1" and health["model"] is None
            async with client.post(f"http://127.0.0.1:{runner.port}/notes", json={"case_text": "Client owes rent."}) as resp:
                assert resp.status == 503
                doc = await resp.json()
        assert doc["gap"] == "llm-inference"
        assert doc["error"].startswith("no llm-inference in the pool: the gateway http://127.0.0.1:")
        assert "did not answer" in doc["error"]
        assert runner.loaded_models == (), "notes-coa has no model of its own"
    finally:
        await runner.stop()


async def test_a_pool_without_llm_inference_is_a_503_naming_the_gap() -> None:
    async with gateways(["n1", "n2"]) as pool:
        runner = await started({"RMAP2P_GATEWAY": pool.urls["n1"]})
        try:
            pool.advertise("n1", {"notes-coa": runner.port or 0})
            async with aiohttp.ClientSession() as client:
                # through the overlay from the other node, as a client would
                url = pool.urls["n2"] + "/api/service/notes-coa/notes"
                async with client.post(url, json={"case_text": "Client owes council tax."}) as resp:
                    assert resp.status == 503
                    assert resp.headers["X-Rmap2p-Node"] == "n1"
                    doc = await resp.json()
        finally:
            await runner.stop()
    assert doc["gap"] == "llm-inference"
    assert doc["error"] == "no llm-inference in the pool: the gateway answered 503: no alive node serves llm-inference"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "JSON object"),
        (b"[1]", 400, "JSON object"),
        (b"{}", 400, "'case_text' must be a non-empty string"),
        (json.dumps({"case_text": "  "}).encode(), 400, "non-empty"),
        (json.dumps({"case_text": 5}).encode(), 400, "non-empty string"),
        (json.dumps({"case_text": "x" * 50_001}).encode(), 413, "longer than 50000"),
    ],
)
async def test_bad_requests_get_a_4xx(body: bytes, status: int, says: str) -> None:
    runner = await started({"RMAP2P_GATEWAY": f"http://127.0.0.1:{closed_port()}"})
    try:
        async with aiohttp.ClientSession() as client, client.post(f"http://127.0.0.1:{runner.port}/notes", data=body) as resp:
            assert resp.status == status
            assert says in (await resp.json())["error"]
    finally:
        await runner.stop()


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        (None, "No such file"),
        ("{not json", "is not JSON"),
        (json.dumps({"system": "s"}), "needs string 'system' and 'user'"),
        (json.dumps({"system": "s", "user": "no placeholder"}), "must contain {case_text}"),
    ],
)
async def test_a_bad_prompt_file_means_it_cannot_run(tmp_path: Path, prompt: str | None, says: str) -> None:
    path = tmp_path / "prompt.json"
    if prompt is not None:
        path.write_text(prompt)
    runner = make_runner(SimpleNamespace(name="notes-coa"), "127.0.0.1", 0, "c1",
                         {"RMAP2P_GATEWAY": "http://127.0.0.1:9", "RMAP2P_NOTES_PROMPT": str(path)}, policy=FAST)
    with pytest.raises(RunnerError) as err:
        await runner.start()
    assert says in str(err.value) and str(path) in str(err.value)
    assert runner.supervisor.runs == 1, "configuration: not retried"


async def test_without_a_gateway_configured_it_cannot_run() -> None:
    runner = make_runner(SimpleNamespace(name="notes-coa"), "127.0.0.1", 0, "c1", {"RMAP2P_GATEWAY": ""}, policy=FAST)
    with pytest.raises(RunnerError, match="RMAP2P_GATEWAY"):
        await runner.start()
