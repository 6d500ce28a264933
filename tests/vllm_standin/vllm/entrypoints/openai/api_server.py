"""STAND-IN for ``python -m vllm.entrypoints.openai.api_server`` in tests; NOT vLLM.

Parses the flags rmap2p passes to vLLM's OpenAI-compatible server, appends its
command line as one JSON line to ``$STANDIN_ARGV_FILE``, waits
``$STANDIN_LOAD_SECONDS`` (vLLM loading weights: nothing listens yet; it prints
vLLM's "Loading safetensors checkpoint shards: 25% Completed" lines), then
serves, as FastAPI like vLLM:

- ``GET /health``: 200 with an empty body, as vLLM;
- ``GET /v1/models``: vLLM's shape, the ``--model`` as the id;
- ``POST /v1/chat/completions`` for messages holding an image (a base64 data
  URL): the "vision model" here is RapidOCR reading the image, so the text
  that comes back is real OCR, not a canned answer. Anything else: 400.

``--middleware`` is loaded exactly as vLLM loads it (an import path to a class
or a coroutine function). ``$STANDIN_EXIT`` makes it exit with that status
instead of serving.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import inspect
import io
import json
import os
import sys
import time
from typing import Any

# At module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def main() -> None:
    parser = argparse.ArgumentParser(description="STAND-IN for vLLM's OpenAI-compatible server (tests only)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpu-memory-utilization", type=float, required=True)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--middleware", action="append", default=[])
    args, extra = parser.parse_known_args()
    record = os.environ.get("STANDIN_ARGV_FILE")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "extra": extra}) + "\n")
    if os.environ.get("STANDIN_EXIT"):
        print("stand-in vLLM: exiting as told", file=sys.stderr, flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT"]))
    load = float(os.environ.get("STANDIN_LOAD_SECONDS", "0"))
    # vLLM's progress bar while it reads the weights (its tqdm bar_format, carriage returns
    # included), when told to take time loading.
    shards = 4 if load > 0 else 0
    for done in range(shards + 1 if shards else 0):
        sys.stderr.write(f"\rLoading safetensors checkpoint shards: {100 * done // shards:3d}% Completed | {done}/{shards} [00:00<00:00]\n")
        sys.stderr.flush()
        if done < shards:
            time.sleep(load / shards)

    import uvicorn

    app = FastAPI()
    reader: list[Any] = []

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({
            "object": "list",
            "data": [{"id": args.model, "object": "model", "owned_by": "vllm", "root": args.model, "max_model_len": args.max_model_len}],
        })

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        images = [
            part["image_url"]["url"]
            for message in body.get("messages", []) if isinstance(message.get("content"), list)
            for part in message["content"] if part.get("type") == "image_url"
        ]
        if len(images) != 1 or not images[0].startswith("data:image/png;base64,"):
            return JSONResponse({"error": "the stand-in answers only chat requests with one PNG data URL"}, status_code=400)
        text = read_image(reader, base64.b64decode(images[0].split(",", 1)[1]))
        return JSONResponse({
            "id": "chatcmpl-standin", "object": "chat.completion", "model": args.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        })

    for middleware in args.middleware:  # as vLLM's build_app does
        module_path, object_name = middleware.rsplit(".", 1)
        imported = getattr(importlib.import_module(module_path), object_name)
        if inspect.isclass(imported):
            app.add_middleware(imported)
        elif inspect.iscoroutinefunction(imported):
            app.middleware("http")(imported)
        else:
            raise ValueError(f"Invalid middleware {middleware}. Must be a function or a class.")

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def read_image(reader: list[Any], png: bytes) -> str:
    import numpy as np
    from PIL import Image
    from rapidocr import RapidOCR

    if not reader:
        reader.append(RapidOCR(params={"Global.log_level": "warning"}))
    result = reader[0](np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    return "\n".join(result.txts or ())


if __name__ == "__main__":
    main()
