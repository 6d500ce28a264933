"""One storage "node" in its own process: a stateful runner driven by JSON lines on stdin.

Run as ``python tests/storage_node.py SERVICE DATA_DIR [--role R] [--primary HOST:PORT]``.
It starts the runner (``services.runners.stateful``) with the given role,
prints one JSON line ``{"ready": true, "port", "pid", "password"}`` (or
``{"error": ...}`` and exits 1), then answers each request line with one
JSON line:

    {"op": "set_role", "role": "primary"|"replica", "primary": "host:port"|null}
    {"op": "replication"}      -> {"role", "linked", "replicas", "offset"}
    {"op": "health"}           -> {"health"}
    {"op": "set_synchronous", "synchronous": bool}   (postgres)
    {"op": "sql", "sql": "..."} -> {"out"}            (postgres, psql's unaligned output)
    {"op": "stop"}             -> stops the runner and exits

Killing this process with SIGKILL is the death of a storage node: the
server child dies with it (``setpriv --pdeathsig``). ``tests/storage.py``
drives it; the multi-daemon tests will replace it by real ``rmap2p join``
nodes once the manager drives stateful runners.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

from services.runners.stateful import make_stateful_runner
from services.stateful import Endpoint
from services.supervisor import RestartPolicy

POLICY = RestartPolicy(check_interval=0.2, backoff_initial=0.5, backoff_max=2.0, stop_timeout=10.0)


def parse_endpoint(text: str | None) -> Endpoint | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--role", default="primary")
    parser.add_argument("--primary")
    parser.add_argument("--pool-secret", default="test pool secret")
    parser.add_argument("--synchronous", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {args.data_dir.name} %(name)s: %(message)s")
    runner = make_stateful_runner(
        args.service, args.data_dir, args.host, args.port, args.data_dir.name, args.pool_secret.encode(), policy=POLICY, synchronous=args.synchronous
    )
    await runner.set_role(args.role, parse_endpoint(args.primary))
    try:
        await runner.start()
    except Exception as exc:  # noqa: BLE001 - reported to the test as data
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    pid = runner.supervisor.pid  # type: ignore[attr-defined]
    print(json.dumps({"ready": True, "port": runner.port, "pid": pid, "password": runner.password}), flush=True)  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            req = json.loads(line)
            try:
                if req["op"] == "set_role":
                    await runner.set_role(req["role"], parse_endpoint(req.get("primary")))
                    answer: dict[str, object] = {"ok": True}
                elif req["op"] == "replication":
                    answer = dataclasses.asdict(await runner.replication())
                elif req["op"] == "set_synchronous":
                    await runner.set_synchronous(req["synchronous"])  # type: ignore[attr-defined]
                    answer = {"ok": True}
                elif req["op"] == "sql":
                    answer = {"out": await runner.sql(req["sql"])}  # type: ignore[attr-defined]
                elif req["op"] == "health":
                    answer = {"health": await runner.health()}
                elif req["op"] == "stop":
                    break
                else:
                    answer = {"error": f"unknown op {req['op']}"}
            except Exception as exc:  # noqa: BLE001
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        await runner.stop()
    print(json.dumps({"stopped": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
