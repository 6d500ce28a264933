"""STAND-IN for ``python -m vllm.entrypoints.openai.api_server`` in tests; NOT vLLM.

Parses the flags rmap2p passes to vLLM's OpenAI-compatible server, appends its
command line as one JSON line to ``$STANDIN_ARGV_FILE``, waits
``$STANDIN_LOAD_SECONDS`` (vLLM loading weights: nothing listens yet), then
serves ``GET /health`` (200, empty body, as vLLM) and ``GET /v1/models`` (vLLM's
shape). ``$STANDIN_EXIT`` makes it exit with that status instead of serving.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description="STAND-IN for vLLM's OpenAI-compatible server (tests only)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpu-memory-utilization", type=float, required=True)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, extra = parser.parse_known_args()
    record = os.environ.get("STANDIN_ARGV_FILE")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "extra": extra}) + "\n")
    if os.environ.get("STANDIN_EXIT"):
        print("stand-in vLLM: exiting as told", file=sys.stderr, flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT"]))
    time.sleep(float(os.environ.get("STANDIN_LOAD_SECONDS", "0")))

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({
            "object": "list",
            "data": [{"id": args.model, "object": "model", "owned_by": "vllm", "root": args.model, "max_model_len": args.max_model_len}],
        })

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
