"""Supervision of real child processes: readiness, restart with back-off, giving up, no orphans.

The children run the real service shell (``services.runners.serve``) with a
model-free engine (``tests/service_child.py``), so every transition here is
a real process exiting, a real port, a real ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil
import pytest

from services.runners.process import ProcessRunner, child_env
from services.supervisor import RestartPolicy, Supervisor, SupervisorError, backoff

CHILD = str(Path(__file__).resolve().parent / "service_child.py")
ROOT = str(Path(__file__).resolve().parent.parent)

FAST = RestartPolicy(
    backoff_initial=0.2, backoff_max=0.8, max_failures=3, ready_timeout=20.0, stable_after=30.0,
    check_interval=0.1, health_timeout=1.0, unresponsive_after=1.0, stop_timeout=2.0,
)  # fmt: skip


def argv(port: int) -> list[str]:
    return [sys.executable, CHILD, "--service", "svc", "--port", str(port), "--exit-on-stdin-eof"]


def supervisor(mode: str, policy: RestartPolicy = FAST, **kw: object) -> Supervisor:
    return Supervisor("svc", argv(0), child_env({"CHILD_MODE": mode, **kw.pop("env", {})}), "127.0.0.1", policy=policy, on_port=argv, **kw)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize(
    ("initial", "cap", "failures", "delay"),
    [
        (1.0, 30.0, 0, 0.0),
        (1.0, 30.0, 1, 1.0),
        (1.0, 30.0, 2, 2.0),
        (1.0, 30.0, 5, 16.0),
        (1.0, 30.0, 6, 30.0),
        (1.0, 30.0, 10_000, 30.0),
        (0.25, 1.0, 3, 1.0),
    ],
)
def test_backoff_doubles_and_is_capped(initial: float, cap: float, failures: int, delay: float) -> None:
    assert backoff(RestartPolicy(backoff_initial=initial, backoff_max=cap), failures) == delay


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(backoff_initial=2.0, backoff_max=1.0)
    with pytest.raises(ValueError):
        RestartPolicy(max_failures=0)


async def test_ready_is_apart_from_alive_and_a_killed_child_comes_back_on_its_port() -> None:
    s = supervisor("ok")
    await s.start()
    try:
        assert s.alive
        await until(lambda: s.ready, 20, "first readiness")
        assert s.state == "ready" and s.health_doc and s.health_doc["model"] == "test-model-ok"
        port, first = s.port, s.pid
        assert port and first
        os.kill(first, signal.SIGKILL)
        await until(lambda: s.pid not in (None, first), 20, "a restarted child")
        assert s.failures == 1 and s.runs == 2
        await until(lambda: s.ready, 20, "readiness after the restart")
        assert s.port == port  # restarted on the port it announced first
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/echo") as resp:
            assert resp.status == 200 and (await resp.json())["pid"] == s.pid
        assert s.gave_up is None
    finally:
        await s.stop()
    assert not s.alive and s.state == "stopped"


async def test_a_child_that_never_becomes_healthy_is_given_up_and_reported_once() -> None:
    reports: list[tuple[str, str]] = []
    policy = RestartPolicy(
        backoff_initial=0.1, backoff_max=0.2, max_failures=2, ready_timeout=1.5,
        check_interval=0.1, health_timeout=0.5, stop_timeout=2.0,
    )  # fmt: skip
    s = supervisor("never", policy, on_give_up=lambda name, why: reports.append((name, why)))
    await s.start()
    try:
        assert s.state == "starting" and s.alive and not s.ready
        await until(lambda: s.gave_up is not None, 20, "giving up")
        assert s.state == "failed" and not s.alive and s.runs == 2
        assert reports == [("svc", s.gave_up)]
        assert "2 consecutive failures" in s.gave_up and "not ready within 1.5 s" in s.gave_up
    finally:
        await s.stop()
    assert s.state == "failed"


async def test_a_crash_loop_backs_off_then_gives_up() -> None:
    reports: list[str] = []
    s = supervisor("crash", on_give_up=lambda _, why: reports.append(why))
    started = time.monotonic()
    await s.start()
    try:
        await until(lambda: s.gave_up is not None, 30, "giving up")
    finally:
        await s.stop()
    # Three runs, two back-offs of 0.2 and 0.4 s between them.
    assert s.runs == 3 and len(reports) == 1
    assert "exited with status 3" in reports[0]
    assert time.monotonic() - started >= 0.6


async def test_a_child_that_says_it_cannot_run_here_fails_start_without_retrying() -> None:
    reports: list[str] = []
    s = supervisor("cannot", on_give_up=lambda _, why: reports.append(why))
    with pytest.raises(SupervisorError, match="model 'nothing' not found"):
        await s.start()
    assert s.runs == 1 and s.state == "failed" and not s.alive
    assert reports == []  # start() raised: the caller heard it there


async def test_a_hung_child_is_killed_and_restarted() -> None:
    s = supervisor("ok")
    await s.start()
    try:
        await until(lambda: s.ready, 20, "readiness")
        hung = s.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # alive but answering nothing
        await until(lambda: s.pid not in (None, hung), 20, "a replacement for the hung child")
        await until(lambda: s.ready, 20, "readiness of the replacement")
        assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE
    finally:
        await s.stop()


async def test_one_late_health_answer_does_not_make_a_ready_child_unready() -> None:
    """A child paused for less than a few checks stays ready (one answer late under load is not a failure);
    paused longer, it turns unready, and ready again when it answers."""
    from dataclasses import replace

    policy = replace(FAST, check_interval=0.1, health_timeout=0.3, unready_after=6, unresponsive_after=30.0)
    s = supervisor("ok", policy)
    await s.start()
    try:
        await until(lambda: s.ready, 20, "readiness")
        pid = s.pid
        assert pid is not None
        seen_unready = False

        async def watch(seconds: float) -> None:
            nonlocal seen_unready
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                seen_unready = seen_unready or not s.ready
                await asyncio.sleep(0.02)

        os.kill(pid, signal.SIGSTOP)
        await watch(1.0)  # two or three checks time out: fewer than unready_after
        os.kill(pid, signal.SIGCONT)
        await watch(1.0)
        assert not seen_unready, "a pause shorter than unready_after checks must not report the child unready"

        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: not s.ready, 20, "the paused child to be reported unready")
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: s.ready, 20, "readiness after the pause")
        assert s.pid == pid, "a pause shorter than unresponsive_after is not a restart"
    finally:
        await s.stop()


async def test_process_runner_reports_health_models_and_failure() -> None:
    failed: list[tuple[str, str]] = []
    # The test child as the runner's module: `python -m service_child` with tests/ on the path.
    env = {"CHILD_MODE": "crash", "CHILD_CRASH_AFTER": "1.5", "PYTHONPATH": os.pathsep.join([str(Path(CHILD).parent), os.environ.get("PYTHONPATH", "")])}
    r = ProcessRunner("svc", "service_child", "127.0.0.1", 0, "node-a", env, policy=FAST, on_failed=lambda s, w: failed.append((s, w)))
    await r.start()
    try:
        assert await r.health() == "starting"
        await until(lambda: r.loaded_models == ("test-model-crash",), 20, "loaded model")
        assert await r.health() == "healthy"
        assert r.port is not None
        await until(lambda: r.failed is not None, 30, "the runner failing for good")
        assert await r.health() == "unhealthy" and r.loaded_models == () and r.port is None
        assert failed == [("svc", r.failed)]
    finally:
        await r.stop()


def test_a_child_exits_when_its_supervising_daemon_is_killed(tmp_path: Path) -> None:
    """SIGKILL the daemon: the child sees EOF on stdin and exits, releasing its port."""
    script = tmp_path / "daemon.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {str(Path(CHILD).parent)!r})\n"
        "from test_supervisor import supervisor\n"
        "async def main():\n"
        "    s = supervisor('ok')\n"
        "    await s.start()\n"
        "    while not s.ready: await asyncio.sleep(0.05)\n"
        "    print(s.pid, s.port, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        line = daemon.stdout.readline()
        child, port = (int(x) for x in line.split())
        daemon.kill()
        daemon.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the child outlived its daemon")
        with socket.socket() as sock:
            # As a server binds (aiohttp does too): connections in TIME_WAIT do not block it, a listener would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    finally:
        if daemon.poll() is None:
            daemon.kill()



async def test_load_progress_is_read_while_loading_and_cleared_once_ready(caplog: pytest.LogCaptureFixture) -> None:
    env = {"CHILD_MODE": "progress", "CHILD_STEP": "0.4",
           "PYTHONPATH": os.pathsep.join([str(Path(CHILD).parent), os.environ.get("PYTHONPATH", "")])}
    r = ProcessRunner("svc", "service_child", "127.0.0.1", 0, "node-a", env, policy=FAST)
    seen: list[int] = []
    docs: list[dict] = []
    caplog.set_level(logging.INFO, logger="services.supervisor")
    await r.start()
    try:
        async with aiohttp.ClientSession() as session:
            while await r.health() == "starting":
                if r.load_progress is not None and (not seen or seen[-1] != r.load_progress):
                    seen.append(r.load_progress)
                    async with session.get(f"http://127.0.0.1:{r.port}/health") as resp:
                        if resp.status == 503:  # else it became ready in between
                            docs.append(await resp.json())
                await asyncio.sleep(0.05)
        assert await r.health() == "healthy"
        assert r.load_progress is None, "ready: nothing left to load"
        assert seen == sorted(seen) and len(set(seen) - {0, 100}) >= 2, seen
        assert docs and all(d["status"] == "loading" and 0 <= d["progress"] <= 100 for d in docs), docs
        logged = [m for m in caplog.messages if "loading its model" in m]
        assert any("loading its model: 100%" in m for m in logged) and len(logged) <= 5, logged
    finally:
        await r.stop()


async def test_a_progress_bar_on_stderr_is_read_line_by_line_carriage_returns_included(caplog: pytest.LogCaptureFixture) -> None:
    from services.load_progress import vllm_progress

    code = (
        "import sys, time\n"
        "for p in (0, 50, 100):\n"
        "    sys.stderr.write(f'\\rLoading safetensors checkpoint shards: {p:3d}% Completed | x'); sys.stderr.flush()\n"
        "    time.sleep(0.3)\n"
        "sys.stderr.write('\\n'); sys.stderr.flush()\n"
        "print('RMAP2P-LISTENING 1', flush=True)\n"
        "time.sleep(30)\n"
    )
    s = Supervisor("bar", [sys.executable, "-c", code], child_env({}), "127.0.0.1", policy=FAST, progress_parser=vllm_progress)
    caplog.set_level(logging.INFO, logger="services.supervisor")
    await s.start()
    try:
        await until(lambda: s.progress == 100, 10, "the last figure")
        logged = [m for m in caplog.messages if "loading its model" in m]
        assert [m.split(": ")[-1].split()[0] for m in logged] == ["0%", "50%", "100%"], logged
    finally:
        await s.stop()
