"""Join speed of real processes: N daemons on one host, from the last one ready until every view
holds every member alive.

    python -m simulations.bench_join                         # rmap2p, 16 processes, 5 runs
    python -m simulations.bench_join --system kinship        # the same harness around kinship
    python -m simulations.bench_join --profile local --runs 7 --json

One run: node 0 starts alone; once it answers, the other N-1 start at once, each joining
through node 0 (``--join``/``seeds``). A poller per process asks its view every
``--poll`` seconds (rmap2p: ``GET /api/admin/workers``; kinship: a tiny HTTP endpoint this
module serves around ``kinship.Cluster.members()``, so both are observed the same way). A
process is *ready* at its first answer; a view is *full* once it lists all N members alive.
Reported per run: the time from the last process ready, from the last process *joined* (its
own view first lists another member), and from the last process start, until the last view
became full (each view must stay full for ``--hold`` seconds). The figures carry the poll
interval as their resolution. kinship's node answers only once ``Cluster.start()`` has joined
its seed, so for it "ready" and "joined" coincide; an rmap2p daemon answers HTTP before its
join loop has run, so its "ready" includes its own join and "joined" is the like-for-like
figure.

Both systems run with the same-named preset (``lan``: rmap2p's default, memberlist's
DefaultLANConfig; ``local``: DefaultLocalConfig). Serf is not measured: its Go binary is not
available here. kinship is a PyPI package (``pip install kinship``); without it,
``--system kinship`` says so and exits 2.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rmap2p.local_ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    name: str
    gossip: int
    http: int
    popen: subprocess.Popen[bytes]
    started: float
    ready: float | None = None
    joined: float | None = None
    """First answer whose view lists another member: this process's own join is done."""
    full_since: float | None = None
    """When this view last became full (None while it is not)."""
    polls: int = 0
    flaps: int = 0
    """Times this view stopped being full again (a member suspected or lost after the join)."""
    errors: list[str] = field(default_factory=list)


def _get(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def _view(base: str, system: str, n: int, timeout: float) -> tuple[int, int]:
    """(members listed, members alive) in one process's view."""
    if system == "kinship":
        doc = _get(base + "/view", timeout)
        return len(doc["members"]), sum(1 for m in doc["members"] if m["state"] == "ALIVE")
    # /health is cheap (counts only); the full worker list costs the daemon a few ms per call,
    # and polling it 20 times a second in 16 daemons on two cores starved the daemons themselves.
    # So the list is fetched only to confirm a view that /health says may be full.
    health = _get(base + "/health", timeout)
    listed, active = int(health["members_known"]), int(health["members_alive"])
    if listed < n or active < n:
        return listed, min(active, listed)
    workers = _get(base + "/api/admin/workers", timeout)["workers"]
    return len(workers), sum(1 for w in workers if w["status"] == "alive")


def _poll(p: Proc, system: str, n: int, interval: float, stop: threading.Event) -> None:
    base = f"http://127.0.0.1:{p.http}"
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            listed, alive = _view(base, system, n, 2.0)
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            if p.popen.poll() is not None:
                p.errors.append(f"exited with {p.popen.returncode}")
                return
        else:
            # The answer describes the view at some instant during the request: take its start,
            # so the resolution is one poll interval plus one request, never an early bias.
            p.polls += 1
            if p.ready is None:
                p.ready = t0
            if p.joined is None and listed > 1:
                p.joined = t0
            if alive >= n:
                if p.full_since is None:
                    p.full_since = t0
            else:
                if p.full_since is not None:
                    p.flaps += 1
                p.full_since = None
        stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def _argv(system: str, name: str, gossip: int, http: int, data: Path, profile: str, seed: int | None) -> list[str]:
    if system == "rmap2p":
        argv = [
            sys.executable, "-m", "rmap2p", *(["-v"] if os.environ.get("BENCH_JOIN_VERBOSE") else []), "join", "--bind", f"127.0.0.1:{gossip}", "--http", f"127.0.0.1:{http}",
            "--data-dir", str(data), "--name", name, "--no-mdns", "--no-services", "--profile", profile,
        ]
        return argv + (["--join", f"127.0.0.1:{seed}"] if seed is not None else [])
    argv = [
        sys.executable, "-m", "simulations.bench_join", "kinship-node", "--name", name,
        "--bind", f"127.0.0.1:{gossip}", "--http", str(http), "--profile", profile,
    ]
    return argv + (["--seed", f"127.0.0.1:{seed}"] if seed is not None else [])


def one_run(system: str, n: int, profile: str, poll: float, timeout: float, hold: float, workdir: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RMAP2P_JOIN", None)
    procs: list[Proc] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(i: int, seed: int | None) -> Proc:
        gossip, http = free_port(), free_port()
        data = workdir / f"n{i}"
        data.mkdir(parents=True, exist_ok=True)
        log = open(workdir / f"n{i}.log", "ab")  # noqa: SIM115 (closed with the process)
        argv = _argv(system, f"bj{i}", gossip, http, data, profile, seed)
        p = Proc(f"bj{i}", gossip, http, subprocess.Popen(argv, cwd=data, stdout=log, stderr=subprocess.STDOUT, env=env), time.monotonic())
        log.close()
        t = threading.Thread(target=_poll, args=(p, system, n, poll, stop), daemon=True)
        t.start()
        threads.append(t)
        procs.append(p)
        return p

    try:
        first = start(0, None)
        deadline = time.monotonic() + 60.0
        while first.ready is None:
            if time.monotonic() > deadline or first.errors:
                raise RuntimeError(f"node 0 never answered: {first.errors}")
            time.sleep(0.02)
        for i in range(1, n):
            start(i, first.gossip)
        last_start = max(p.started for p in procs)
        deadline = last_start + timeout
        converged: float | None = None
        while time.monotonic() < deadline:
            if any(p.errors for p in procs):
                break
            if all(p.full_since is not None for p in procs):
                converged = max(p.full_since for p in procs)  # type: ignore[type-var]
                break
            time.sleep(poll / 2)
        if converged is not None:
            # Full views must stay full (no flapping suspicion right after the join).
            time.sleep(hold)
            if not all(p.full_since is not None and p.full_since <= converged for p in procs):
                converged = None
        last_ready = max((p.ready for p in procs if p.ready is not None), default=None)
        last_joined = max((p.joined for p in procs if p.joined is not None), default=None)
        result: dict[str, object] = {
            "converged": converged is not None,
            "from_last_ready_s": round(converged - last_ready, 3) if converged is not None and last_ready else None,
            "from_last_start_s": round(converged - last_start, 3) if converged is not None else None,
            "from_last_joined_s": round(converged - last_joined, 3) if converged is not None and last_joined else None,
            "ready_spread_s": round(last_ready - min(p.ready for p in procs if p.ready), 3) if last_ready else None,
            "polls": sum(p.polls for p in procs),
            "flaps": sum(p.flaps for p in procs),
            "errors": {p.name: p.errors for p in procs if p.errors},
            "full_after_last_ready_s": {
                p.name: round(p.full_since - last_ready, 3) for p in procs if p.full_since is not None and last_ready
            },
        }
        return result
    finally:
        stop.set()
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)
        for t in threads:
            t.join(timeout=5)


def _summary(values: list[float]) -> str:
    if not values:
        return "—"
    values = sorted(values)
    return f"median {statistics.median(values):.2f} s (min {values[0]:.2f}, max {values[-1]:.2f})"


async def _kinship_node(a: argparse.Namespace) -> None:
    import kinship
    from aiohttp import web

    preset = {"lan": kinship.Config.lan, "local": kinship.Config.local}[a.profile]
    fields: dict[str, object] = dict(name=a.name, bind=a.bind, seeds=[a.seed] if a.seed else [])
    if a.profile != "local":
        fields["insecure_plaintext"] = True  # loopback only, as rmap2p runs here without a keyring
    cfg = preset(**fields)
    async with kinship.Cluster(cfg) as cluster:

        async def view(_: web.Request) -> web.Response:
            members = [{"name": m.name, "state": m.state.name} for m in cluster.members()]
            return web.json_response({"members": members})

        app = web.Application()
        app.router.add_get("/view", view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.http).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "kinship-node":
        k = argparse.ArgumentParser(prog="bench_join kinship-node")
        k.add_argument("--name", required=True)
        k.add_argument("--bind", required=True)
        k.add_argument("--http", type=int, required=True)
        k.add_argument("--seed")
        k.add_argument("--profile", default="lan")
        ka = k.parse_args(argv[1:])
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(_kinship_node(ka))
        return 0
    p = argparse.ArgumentParser(prog="python -m simulations.bench_join", description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=("rmap2p", "kinship"), default="rmap2p")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--profile", choices=("lan", "local"), default="lan")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between view polls per process (the resolution)")
    p.add_argument("--timeout", type=float, default=60.0, help="give a run up to this long from the last start")
    p.add_argument("--hold", type=float, default=2.0, help="views must stay full this long after convergence")
    p.add_argument("--json", action="store_true", help="one JSON object with every run")
    p.add_argument("--keep", action="store_true", help="keep the processes' logs and data dirs")
    a = p.parse_args(argv)
    if a.system == "kinship":
        try:
            import kinship  # noqa: F401
        except ImportError:
            print("kinship is not installed (pip install kinship)", file=sys.stderr)
            return 2
    runs = []
    for r in range(a.runs):
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-join-{a.system}-"))
        try:
            res = one_run(a.system, a.nodes, a.profile, a.poll, a.timeout, a.hold, workdir)
        finally:
            if not a.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        res["run"] = r + 1
        if a.keep:
            res["workdir"] = str(workdir)
        runs.append(res)
        if not a.json:
            print(
                f"run {r + 1}: {'converged' if res['converged'] else 'NOT converged'}; from last ready "
                f"{res['from_last_ready_s']} s, from last joined {res['from_last_joined_s']} s, "
                f"from last start {res['from_last_start_s']} s "
                f"(ready spread {res['ready_spread_s']} s){' errors ' + str(res['errors']) if res['errors'] else ''}",
                flush=True,
            )
    ready = [float(r["from_last_ready_s"]) for r in runs if r["from_last_ready_s"] is not None]  # type: ignore[arg-type]
    start = [float(r["from_last_start_s"]) for r in runs if r["from_last_start_s"] is not None]  # type: ignore[arg-type]
    joined = [float(r["from_last_joined_s"]) for r in runs if r["from_last_joined_s"] is not None]  # type: ignore[arg-type]
    summary = {
        "system": a.system, "nodes": a.nodes, "profile": a.profile, "poll_s": a.poll, "runs": runs,
        "converged": sum(1 for r in runs if r["converged"]),
        "from_last_ready": _summary(ready), "from_last_joined": _summary(joined), "from_last_start": _summary(start),
    }
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{a.system} ({a.profile}), {a.nodes} processes, {summary['converged']}/{a.runs} converged; "
            f"from last ready: {summary['from_last_ready']}; from last joined: {summary['from_last_joined']}; "
            f"from last start: {summary['from_last_start']}"
        )
    return 0 if summary["converged"] == a.runs else 1


if __name__ == "__main__":
    sys.exit(main())
