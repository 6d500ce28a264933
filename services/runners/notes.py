"""notes-coa: advisor notes from a case text, written by llm-inference reached through the overlay.

    POST /notes {"case_text": "..."} -> {"notes": "...", "model": "<the LLM that wrote them>", "prompt": "<name>"}

The service has no model of its own. It fills the prompt (data, not code:
``services/prompts/notes_coa.json``, or the file ``RMAP2P_NOTES_PROMPT``
names) and sends it as an OpenAI chat completion to
``$RMAP2P_GATEWAY/api/service/llm-inference/v1/chat/completions``:
``RMAP2P_GATEWAY`` is the base URL of a node's gateway (normally the node
this child runs on, e.g. ``http://127.0.0.1:8080``), which forwards to
whichever node of the pool serves llm-inference. ``RMAP2P_TOKEN``, if set,
goes along as a bearer token (pools with a keyring).

When the pool has no llm-inference (the gateway answers 503, or does not
answer at all) the answer is 503 ``{"error": "no llm-inference in the pool:
...", "gap": "llm-inference"}``. Any other failure of the LLM is a 502 with its
status and message.

Run as ``python -m services.runners.notes --service notes-coa --port P``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.runners.serve import (
    CannotRun,
    Engine,
    Route,
    json_error,
    main,
    read_json_object,
)

PROMPT_FILE = Path(__file__).resolve().parents[1] / "prompts" / "notes_coa.json"
LLM_PATH = "/api/service/llm-inference/v1/chat/completions"
MAX_CASE_CHARS = 50_000
LLM_TIMEOUT = 600.0
"""A CPU model writing 512 tokens takes minutes; the client's own timeout is the real limit."""


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    system: str
    user: str
    max_tokens: int
    temperature: float

    def messages(self, case_text: str) -> list[dict[str, str]]:
        # str.replace, not str.format: the case text and the prompt may hold braces.
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.replace("{case_text}", case_text)}]


def prompt_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("RMAP2P_NOTES_PROMPT", "").strip() or PROMPT_FILE)


def load_prompt(path: Path) -> Prompt:
    """The prompt in ``path``; raises ``CannotRun`` naming what is wrong with the file."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise CannotRun(f"prompt file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CannotRun(f"prompt file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CannotRun(f"prompt file {path}: not a JSON object")
    try:
        prompt = Prompt(
            name=str(doc.get("name", path.stem)),
            system=doc["system"],
            user=doc["user"],
            max_tokens=int(doc.get("max_tokens", 512)),
            temperature=float(doc.get("temperature", 0.2)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CannotRun(f"prompt file {path}: needs string 'system' and 'user' ({exc})") from None
    if not isinstance(prompt.system, str) or not isinstance(prompt.user, str) or "{case_text}" not in prompt.user:
        raise CannotRun(f"prompt file {path}: 'system' and 'user' must be strings, 'user' must contain {{case_text}}")
    return prompt


@dataclass(slots=True)
class Loaded:
    prompt: Prompt
    gateway: str
    token: str | None
    session: aiohttp.ClientSession | None = None


class NotesEngine(Engine[Loaded]):
    backend = "llm-inference via the overlay"
    max_body = 1024 * 1024

    def preflight(self, env: Mapping[str, str]) -> None:
        if not env.get("RMAP2P_GATEWAY", "").strip():
            raise CannotRun("RMAP2P_GATEWAY (the base URL of a node's gateway) is not set")
        load_prompt(prompt_path(env))  # a broken prompt file is configuration: fail before binding

    def load(self, env: Mapping[str, str]) -> Loaded:
        gateway = env["RMAP2P_GATEWAY"].strip().rstrip("/")
        if "://" not in gateway:
            gateway = "http://" + gateway
        return Loaded(load_prompt(prompt_path(env)), gateway, env.get("RMAP2P_TOKEN", "").strip() or None)

    async def started(self, loaded: Loaded) -> None:
        loaded.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LLM_TIMEOUT, sock_connect=5.0))

    async def closing(self, loaded: Loaded) -> None:
        if loaded.session is not None:
            await loaded.session.close()

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        return {"model": None, "prompt": loaded.prompt.name, "gateway": loaded.gateway}

    def routes(self) -> Sequence[Route[Loaded]]:
        return (Route("POST", "/notes", notes),)


async def notes(loaded: Loaded, request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, str):
        return json_error(400, body)
    case_text = body.get("case_text")
    if not isinstance(case_text, str) or not case_text.strip():
        return json_error(400, "'case_text' must be a non-empty string")
    if len(case_text) > MAX_CASE_CHARS:
        return json_error(413, f"'case_text' is longer than {MAX_CASE_CHARS} characters")
    prompt = loaded.prompt
    payload = {"messages": prompt.messages(case_text), "max_tokens": prompt.max_tokens, "temperature": prompt.temperature, "stream": False}
    headers = {"Authorization": f"Bearer {loaded.token}"} if loaded.token else {}
    url = loaded.gateway + LLM_PATH
    assert loaded.session is not None
    try:
        async with loaded.session.post(url, json=payload, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
    except TimeoutError:  # before OSError, its base class
        return json_error(504, f"llm-inference did not answer within {LLM_TIMEOUT:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return _no_llm(f"the gateway {loaded.gateway} did not answer ({exc.__class__.__name__}: {exc})")
    upstream = _json_or_text(raw)
    if status == 503:
        why = upstream.get("error") if isinstance(upstream, dict) else upstream
        return _no_llm(f"the gateway answered 503: {why}")
    if status != 200:
        return json_error(502, f"llm-inference answered {status}: {upstream}")
    try:
        text = upstream["choices"][0]["message"]["content"]
        model = upstream.get("model")
    except (KeyError, IndexError, TypeError):
        return json_error(502, "llm-inference answered 200 without choices[0].message.content")
    if not isinstance(text, str):
        return json_error(502, "llm-inference answered a non-string message content")
    return web.json_response({"notes": text.strip(), "model": model, "prompt": prompt.name})


def _no_llm(detail: str) -> web.Response:
    return web.json_response({"error": f"no llm-inference in the pool: {detail}", "gap": "llm-inference"}, status=503)


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:500].decode(errors="replace")


if __name__ == "__main__":
    main(NotesEngine())
