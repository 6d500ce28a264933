"""``POST /ocr`` on vLLM: the vision-ocr API on a GPU node, as middleware inside vLLM's own server.

vLLM's OpenAI server loads ASGI middleware named by ``--middleware``; the
vision-ocr launcher (``services.runners.vllm``) passes ``ocr_middleware`` so
the one supervised process answers both OpenAI chat with images and the
pool's ``POST /ocr`` (the same contract as the CPU engine,
``services.runners.ocr``). Each page of the upload (an image, or a PDF
rendered with pypdfium2) goes to the server's own ``/v1/chat/completions`` as
a base64 PNG with the prompt in ``services/prompts/vision_ocr.json`` (or
``RMAP2P_VISION_PROMPT``); the answers are the page texts.

The launcher tells it where the server listens and what it serves
(``RMAP2P_VLLM_PORT``, ``RMAP2P_VLLM_MODEL``, ``RMAP2P_VLLM_MAX_MODEL_LEN``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import aiohttp

from services.runners.ocr import BadInput, page_images

PROMPT_FILE = Path(__file__).resolve().parents[1] / "prompts" / "vision_ocr.json"
PAGE_TIMEOUT = 300.0


def load_prompt() -> tuple[str, int]:
    doc = json.loads(Path(os.environ.get("RMAP2P_VISION_PROMPT", "").strip() or PROMPT_FILE).read_text())
    return str(doc["text"]), int(doc.get("max_tokens", 2048))


def upload(content_type: str, body: bytes) -> bytes:
    """The file in a raw body or in the ``file`` part of a multipart form; raises ``BadInput``."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise BadInput(400, "a form upload must be multipart/form-data with a 'file' field holding the image or PDF")
    if not content_type.startswith("multipart/"):
        return body
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise BadInput(400, "malformed multipart body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise BadInput(400, "multipart upload needs a 'file' field holding the image or PDF")


def page_request(model: str, prompt: str, max_tokens: int, image: Any) -> dict[str, Any]:
    """The OpenAI chat request that asks the vision model for one page's text."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    return {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": prompt},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }  # fmt: skip


async def read_pages(data: bytes) -> tuple[list[str], str]:
    """Page texts of ``data`` from the vision model, and the model's name."""
    port = int(os.environ["RMAP2P_VLLM_PORT"])
    model = os.environ["RMAP2P_VLLM_MODEL"]
    prompt, max_tokens = load_prompt()
    budget = os.environ.get("RMAP2P_VLLM_MAX_MODEL_LEN", "")
    if budget.isdigit():
        max_tokens = min(max_tokens, int(budget) // 2)  # the image's tokens need the other half
    images = await asyncio.to_thread(page_images, data, True)
    texts = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PAGE_TIMEOUT)) as session:
        for image in images:
            payload = await asyncio.to_thread(page_request, model, prompt, max_tokens, image)
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=payload) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200:
                    raise BadInput(502, f"the vision model answered {resp.status}: {doc}")
            texts.append(str(doc["choices"][0]["message"]["content"] or "").strip())
    return texts, model


async def ocr_middleware(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    """Starlette HTTP middleware: ``POST /ocr`` here, everything else to vLLM."""
    if request.url.path != "/ocr":
        return await call_next(request)
    from starlette.responses import JSONResponse

    if request.method != "POST":
        return JSONResponse({"error": "POST an image or a PDF to /ocr"}, status_code=405)
    try:
        data = upload(request.headers.get("content-type", ""), await request.body())
        if not data:
            raise BadInput(400, "empty upload: send an image or a PDF as the body or as the 'file' form field")
        texts, model = await read_pages(data)
    except BadInput as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return JSONResponse({"error": f"the vision model did not answer: {exc!r}"}, status_code=502)
    return JSONResponse({"text": "\n\n".join(texts), "pages": len(texts), "page_texts": texts, "model": model, "backend": "vllm"})
