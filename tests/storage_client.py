"""A storage client run inside a lab host: writes, write probes and counts through local ports.

Run as ``python tests/storage_client.py OP --redis-port P --pg-port Q --redis-password A --pg-password B``
inside a network namespace (``tests/test_netns_storage.py``); it prints one JSON line.

- ``write --n N --offset O``: N Redis SETs ``k{i}`` (batches of 100, each followed by ``WAIT 1 5000``:
  acknowledged only once a replica has them) and N PostgreSQL rows in ``items`` (one transaction per
  100 rows; the primary commits synchronously). Prints how many of each were acknowledged.
- ``probe --timeout T``: one Redis write and one PostgreSQL insert, retried until each succeeds
  (connections time out after a second); prints ``time.monotonic()`` of each first success.
  CLOCK_MONOTONIC is one clock for every namespace, so the test compares it with its own.
- ``stream --duration D``: for D seconds, one Redis ``SET {prefix}{i}`` and one PostgreSQL insert into
  ``stream_{prefix}`` after another, each on a fresh connection; prints the ids each engine acknowledged
  and the longest time between two acknowledged writes (the writable gap), with when it began.
- ``check --ids "redis=1,2;postgres=3"``: how many of those acknowledged stream writes are missing.
- ``count --n N``: keys ``k0..k{N-1}`` holding their values, rows in ``items``, and whether each
  engine behind the port accepts a write now.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.runners.postgres import conninfo, find_bin_dir
from services.runners.resp import RespClient, RespError
from services.stateful import Endpoint

REDIS_ERRORS = (TimeoutError, OSError, RespError, ConnectionError, EOFError, asyncio.IncompleteReadError)


def psql(args: argparse.Namespace, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    bin_dir = find_bin_dir()
    assert bin_dir is not None, "PostgreSQL's programs not found"
    info = conninfo(Endpoint(args.host, args.pg_port), args.pg_password) + " connect_timeout=1"
    return subprocess.run(
        [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", script, info],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


async def redis_write(args: argparse.Namespace, n: int, offset: int) -> int:
    client = await RespClient.connect(args.host, args.redis_port, args.redis_password, timeout=5)
    acked = 0
    try:
        for start in range(offset, offset + n, 100):
            stop = min(start + 100, offset + n)
            replies = await client.pipeline([("SET", f"k{i}", f"v{i}") for i in range(start, stop)] + [("WAIT", 1, 5000)])
            if all(r == "OK" for r in replies[:-1]) and isinstance(replies[-1], int) and replies[-1] >= 1:
                acked += stop - start
    finally:
        await client.close()
    return acked


def pg_write(args: argparse.Namespace, n: int, offset: int) -> int:
    made = psql(args, "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, body text)")
    if made.returncode != 0:
        raise SystemExit(f"postgres: {made.stderr.strip()}")
    committed = 0
    for start in range(offset, offset + n, 100):
        stop = min(start + 100, offset + n)
        values = ", ".join(f"({i}, 'row {i}')" for i in range(start, stop))
        if psql(args, f"INSERT INTO items VALUES {values}").returncode == 0:
            committed += stop - start
    return committed


async def redis_try(args: argparse.Namespace, *command: str) -> object:
    client = await RespClient.connect(args.host, args.redis_port, args.redis_password, timeout=1)
    try:
        return await asyncio.wait_for(client.command(*command), 2)
    finally:
        await client.close()


def probe(args: argparse.Namespace) -> dict[str, float | None]:
    first: dict[str, float | None] = {"redis": None, "postgres": None}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and None in first.values():
        if first["redis"] is None:
            try:
                if asyncio.run(redis_try(args, "SET", "probe", str(time.monotonic()))) == "OK":
                    first["redis"] = time.monotonic()
            except REDIS_ERRORS:
                pass
        if first["postgres"] is None:
            sql = "CREATE TABLE IF NOT EXISTS probes (at float8); INSERT INTO probes VALUES (extract(epoch from now()))"
            if psql(args, sql, timeout=5).returncode == 0:
                first["postgres"] = time.monotonic()
        time.sleep(0.05)
    return first


def stream(args: argparse.Namespace) -> dict[str, object]:
    table = f"stream_{args.prefix}"
    made = psql(args, f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)")
    if made.returncode != 0:
        raise SystemExit(f"postgres: {made.stderr.strip()}")
    acked: dict[str, list[int]] = {"redis": [], "postgres": []}
    acked_at: dict[str, list[float]] = {"redis": [], "postgres": []}
    refused_at: dict[str, float | None] = {"redis": None, "postgres": None}
    last: dict[str, float] = {s: time.monotonic() for s in acked}
    gap: dict[str, tuple[float, float]] = {s: (0.0, 0.0) for s in acked}
    failed = {s: 0 for s in acked}
    end = time.monotonic() + args.duration
    i = 0
    while time.monotonic() < end:
        i += 1
        done: dict[str, bool] = {}
        try:
            done["redis"] = asyncio.run(redis_try(args, "SET", f"{args.prefix}{i}", str(i))) == "OK"
        except RespError as exc:
            done["redis"] = False
            if "NOREPLICAS" in str(exc) and refused_at["redis"] is None:
                refused_at["redis"] = time.monotonic()
        except REDIS_ERRORS:
            done["redis"] = False
        try:
            cp = psql(args, f"INSERT INTO {table} VALUES ({i})", timeout=3)
            done["postgres"] = cp.returncode == 0
            if "read-only transaction" in cp.stderr and refused_at["postgres"] is None:
                refused_at["postgres"] = time.monotonic()
        except subprocess.TimeoutExpired:
            done["postgres"] = False  # a commit waiting for a standby is no acknowledgement
        now = time.monotonic()
        for s, good in done.items():
            if good:
                acked[s].append(i)
                acked_at[s].append(now)
                if now - last[s] > gap[s][0]:
                    gap[s] = (now - last[s], last[s])
                last[s] = now
            else:
                failed[s] += 1
        time.sleep(0.02)
    return {
        "acked": acked, "acked_at": acked_at, "refused_at": refused_at, "failed": failed,
        "gap": {s: g[0] for s, g in gap.items()}, "gap_from": {s: g[1] for s, g in gap.items()},
    }  # fmt: skip


async def redis_check(args: argparse.Namespace, keys: list[str]) -> int:
    client = await RespClient.connect(args.host, args.redis_port, args.redis_password, timeout=5)
    try:
        replies = await client.pipeline([("GET", k) for k in keys])
    finally:
        await client.close()
    return sum(1 for r in replies if r is not None and not isinstance(r, RespError))


async def redis_count(args: argparse.Namespace, n: int) -> tuple[int, bool]:
    client = await RespClient.connect(args.host, args.redis_port, args.redis_password, timeout=5)
    try:
        replies = await client.pipeline([("GET", f"k{i}") for i in range(n)] + [("SET", "count-probe", "1")])
    finally:
        await client.close()
    return sum(1 for i, r in enumerate(replies[:n]) if r == f"v{i}".encode()), replies[-1] == "OK"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=("write", "probe", "count", "stream", "check"))
    parser.add_argument("--host", default="127.0.0.1", help="where the engines (or the local proxy) listen")
    parser.add_argument("--prefix", default="g", help="stream/check: Redis key prefix and PostgreSQL table stream_PREFIX")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--redis-password", required=True)
    parser.add_argument("--pg-password", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--ids", default="", help="check: redis=1,2,3;postgres=4,5 (ids from stream)")
    args = parser.parse_args()
    if args.op == "write":
        out: dict[str, object] = {"redis": asyncio.run(redis_write(args, args.n, args.offset)), "postgres": pg_write(args, args.n, args.offset)}
    elif args.op == "stream":
        out = stream(args)
    elif args.op == "check":
        ids = {part.split("=", 1)[0]: [int(x) for x in part.split("=", 1)[1].split(",") if x] for part in args.ids.split(";") if "=" in part}
        redis_ids, pg_ids = ids.get("redis", []), ids.get("postgres", [])
        present = psql(args, f"SELECT id FROM stream_{args.prefix}")
        rows = {int(x) for x in present.stdout.split()} if present.returncode == 0 else set()
        out = {
            "redis_missing": len(redis_ids) - asyncio.run(redis_check(args, [f"{args.prefix}{i}" for i in redis_ids])),
            "postgres_missing": len(set(pg_ids) - rows),
        }
    elif args.op == "probe":
        out = dict(probe(args))
    else:
        keys, redis_writable = asyncio.run(redis_count(args, args.n))
        rows = psql(args, "SELECT count(*) FROM items")
        pg_writable = psql(args, "INSERT INTO probes VALUES (0)").returncode == 0
        out = {
            "redis": keys, "redis_writable": redis_writable,
            "postgres": int(rows.stdout.strip()) if rows.returncode == 0 else rows.stderr.strip(), "postgres_writable": pg_writable,
        }  # fmt: skip
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
