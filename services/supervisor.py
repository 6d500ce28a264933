"""Supervision of one service child process: start, readiness, restart with back-off, give up.

Liveness and readiness are two facts, kept apart. *Alive* means the process
is running. *Ready* means its ``GET /health`` answered 200, polled every
``check_interval``. A child announces the port it listens on with one line on
stdout (``RMAP2P-LISTENING <port>``), binds before it loads its model and
answers ``/health`` with 503 while it loads, so a port clash fails in a
second and a slow model load is "alive, not ready" rather than "dead".

A run of the child ends in one of these ways, each a *failure* unless we
asked it to stop:

- it exits (crash, OOM kill, a signal from outside);
- it is not ready ``ready_timeout`` seconds after it was spawned (killed);
- it was ready, then failed every health check for ``unresponsive_after``
  seconds (hung; killed);
- it exits with ``EXIT_CONFIG`` (78, sysexits' EX_CONFIG): it says it can
  never start on this machine (model missing, port taken), so the supervisor
  gives up at once instead of retrying what cannot work.

After a failure the child is restarted after ``backoff(policy, failures)``
seconds (doubling, capped). ``failures`` counts consecutive failures; a run
that stayed ready for ``stable_after`` seconds resets it. At
``max_failures`` the supervisor gives up: ``gave_up`` holds the reason (with
the last lines the child wrote to stderr) and ``on_give_up(name, reason)`` is
called once, which is how a node drops the service from its capabilities so
the allocator places it elsewhere.

While it loads, a child may print ``RMAP2P-PROGRESS <percent>`` on stdout
(``services.load_progress``); a child we do not write is read through
``progress_parser`` on each line it writes, stderr included, where a
progress bar's carriage returns also end a line. ``progress`` holds the last
figure of the current run until it is ready, and the log says it every
``PROGRESS_LOG_STEP`` points.

The child's stdin is a pipe the supervisor holds and never writes: when the
daemon dies, even by SIGKILL, the child reads EOF and exits, so no orphan
keeps a service's port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.load_progress import parse_progress_line

log = logging.getLogger(__name__)

EXIT_CONFIG = 78
"""Exit status of a child that can never start here (sysexits.h EX_CONFIG): do not retry."""

LISTENING = "RMAP2P-LISTENING"
"""Prefix of the stdout line on which a child announces its port."""

LOADING_NOTE_EVERY = 10.0
"""Seconds between "still loading" lines while a child is alive but not yet ready."""
STDERR_TAIL = 20
"""Lines of the child's stderr kept for the give-up reason."""
PROGRESS_LOG_STEP = 25
"""Percent points between two "loading" log lines of one run."""
MAX_LINE = 64 * 1024
"""A child's output line longer than this is cut (a progress bar without line ends)."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a supervisor waits, checks and retries. All times in seconds."""

    backoff_initial: float = 1.0
    """Delay before the first restart; doubles with each consecutive failure."""
    backoff_max: float = 30.0
    """Cap on the delay between restarts."""
    max_failures: int = 5
    """Consecutive failures after which the supervisor gives up."""
    ready_timeout: float = 300.0
    """From spawn to the first 200 on /health (covers loading a model from disk on a slow CPU)."""
    stable_after: float = 60.0
    """A run ready this long resets the consecutive-failure count."""
    check_interval: float = 1.0
    """Between two health checks."""
    health_timeout: float = 2.0
    """One health request's limit."""
    unresponsive_after: float = 15.0
    """A ready child failing every health check this long is killed as hung."""
    unready_after: int = 2
    """Consecutive failed health checks before a ready child is reported unready: one answer
    late under load (a batch in progress, a busy machine) must not take the service out of the
    pool's routing and allocation. An exit is reported at once."""
    stop_timeout: float = 10.0
    """Between the stop signal (SIGTERM unless told otherwise) and SIGKILL when stopping a child."""

    def __post_init__(self) -> None:
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if self.unready_after < 1:
            raise ValueError("unready_after must be at least 1")
        for name in ("ready_timeout", "stable_after", "check_interval", "health_timeout", "unresponsive_after", "stop_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def backoff(policy: RestartPolicy, failures: int) -> float:
    """Delay before the restart that follows the ``failures``-th consecutive failure.

    ``min(backoff_max, backoff_initial * 2 ** (failures - 1))``; 0 for no failure.
    """
    if failures <= 0:
        return 0.0
    # Bound the exponent: 2**1000 is a float overflow, and the cap is reached long before.
    return min(policy.backoff_max, policy.backoff_initial * 2.0 ** min(failures - 1, 60))


class SupervisorError(RuntimeError):
    """The child could not be spawned at all, or said at once that it cannot run here."""


class Supervisor:
    """Keeps one child process running and answers whether it is alive and ready.

    ``state`` is one of ``starting`` (first run, not ready yet), ``ready``,
    ``unready`` (was ready, health failing), ``restarting`` (waiting out a
    back-off or a restarted child not ready yet), ``failed`` (gave up) and
    ``stopped``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        host: str,
        policy: RestartPolicy | None = None,
        on_give_up: Callable[[str, str], None] | None = None,
        on_port: Callable[[int], Sequence[str]] | None = None,
        stop_signal: int = signal.SIGTERM,
        progress_parser: Callable[[str], int | None] | None = None,
    ) -> None:
        """``on_port(port)``, if given, returns the argv to use for restarts once the first
        run announced its port (so a child started on port 0 comes back on the same port).
        ``stop_signal`` asks the child to stop; SIGKILL follows after ``policy.stop_timeout``.
        ``progress_parser(line)`` finds a load percent in a line of a child that does not
        print ``RMAP2P-PROGRESS`` itself (vLLM)."""
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._host = host
        self.policy = policy or RestartPolicy()
        self._on_give_up = on_give_up
        self._on_port = on_port
        self._stop_signal = stop_signal
        self._progress_parser = progress_parser
        self.progress: int | None = None
        """The last load percent the current run reported, until it is ready; None when unknown."""
        self._progress_logged = -1
        self.state = "stopped"
        self.port: int | None = None
        self.health_doc: dict[str, Any] | None = None
        self.failures = 0
        self.runs = 0
        self.gave_up: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = False
        self._first_outcome: asyncio.Future[int | None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._stderr_done: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._starting = False
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ public

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def ready(self) -> bool:
        return self.alive and self._ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.alive and self._proc is not None else None

    async def start(self, announce_timeout: float = 30.0) -> None:
        """Spawn the first run and wait until it announced its port or exited.

        Raises ``SupervisorError`` if it cannot be spawned or exits with
        ``EXIT_CONFIG`` before announcing (then nothing is retried). Any other
        early exit is left to the restart loop.
        """
        if self._task is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._stopping = False
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.policy.health_timeout))
        loop = asyncio.get_running_loop()
        self._first_outcome = loop.create_future()
        self.state = "starting"
        self._starting = True
        try:
            return await self._start(announce_timeout)
        finally:
            self._starting = False

    async def _start(self, announce_timeout: float) -> None:
        assert self._first_outcome is not None
        try:
            proc = await self._spawn()
        except OSError as exc:
            await self._close_session()
            self.state = "stopped"
            raise SupervisorError(f"{self.name}: cannot execute {self._argv[0]}: {exc.strerror or exc}") from None
        self._task = asyncio.create_task(self._supervise(proc), name=f"supervise-{self.name}")
        try:
            code = await asyncio.wait_for(asyncio.shield(self._first_outcome), announce_timeout)
        except TimeoutError:
            return  # slow interpreter start: the ready timeout still bounds it
        if code == EXIT_CONFIG:
            reason = self.gave_up or f"{self.name}: exited with status {code}"
            await self.stop()
            self.gave_up = reason
            self.state = "failed"
            raise SupervisorError(reason)

    async def stop(self) -> None:
        """Stop the child (``stop_signal``, then SIGKILL) and the supervision; idempotent."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._proc is not None:
            await self._terminate(self._proc)
        self._ready = False
        if self.state != "failed":
            self.state = "stopped"
        await self._close_session()

    # ------------------------------------------------------------ the loop

    async def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        while True:
            outcome, stable = await self._watch(proc)
            if self._stopping:
                return
            if outcome == "config":
                self._give_up(f"cannot run here: {self._last_words()}")
                return
            self.failures = 1 if stable else self.failures + 1
            if self.failures >= self.policy.max_failures:
                self._give_up(f"{self.failures} consecutive failures, last: {outcome}; {self._last_words()}")
                return
            delay = backoff(self.policy, self.failures)
            log.warning("service %s: %s; restart %d in %.1f s", self.name, outcome, self.failures, delay)
            self.state = "restarting"
            await asyncio.sleep(delay)
            try:
                proc = await self._spawn()
            except OSError as exc:
                self._give_up(f"cannot execute {self._argv[0]}: {exc.strerror or exc}")
                return

    async def _watch(self, proc: asyncio.subprocess.Process) -> tuple[str, bool]:
        """Follow one run until it ends; return (why it ended, whether it had been stable)."""
        spawned = time.monotonic()
        ready_since: float | None = None
        last_ok = last_progress = spawned
        stable = False
        misses = 0
        wait = asyncio.create_task(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({wait}, timeout=self.policy.check_interval)
                now = time.monotonic()
                if ready_since is not None and now - ready_since >= self.policy.stable_after:
                    stable = True
                if done:
                    code = wait.result()
                    self._ready = False
                    await self._drain_stderr()
                    if code == EXIT_CONFIG:
                        return "config", stable
                    return f"exited with status {code}", stable
                ok = await self._check()
                now = time.monotonic()
                misses = 0 if ok else misses + 1
                if ok:
                    last_ok = now
                    if not self._ready:
                        log.info("service %s: ready on port %s (run %d)", self.name, self.port, self.runs)
                    self._ready = True
                    self.progress = None
                    ready_since = ready_since if ready_since is not None else now
                    self.state = "ready"
                    continue
                if ready_since is None:
                    if now - spawned >= self.policy.ready_timeout:
                        await self._terminate(proc)
                        return f"not ready within {self.policy.ready_timeout:g} s", stable
                    if now - last_progress >= LOADING_NOTE_EVERY:
                        # A model load can take minutes: say it is still going, and for how long it may.
                        last_progress = now
                        log.info(
                            "service %s: still loading (%.0f s of at most %g s, run %d%s)",
                            self.name, now - spawned, self.policy.ready_timeout, self.runs,
                            f", {self.progress}%" if self.progress is not None else "",
                        )
                elif misses >= self.policy.unready_after or not self._ready:
                    self._ready = False
                    self.state = "unready"
                    if now - last_ok >= self.policy.unresponsive_after:
                        await self._terminate(proc)
                        return f"unresponsive for {self.policy.unresponsive_after:g} s", stable
        finally:
            if not wait.done():
                wait.cancel()

    async def _check(self) -> bool:
        if self.port is None or self._session is None:
            return False
        url = f"http://{connect_host(self._host)}:{self.port}/health"
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    return False
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return False
        self.health_doc = doc if isinstance(doc, dict) else None
        return True

    # ------------------------------------------------------------ process plumbing

    async def _spawn(self) -> asyncio.subprocess.Process:
        argv = self._argv
        if self.port is not None and self._on_port is not None:
            argv = list(self._on_port(self.port))
        self._tail.clear()
        self._ready = False
        self.health_doc = None
        self.progress = None
        self._progress_logged = -1
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        self._proc = proc
        self.runs += 1
        log.info("service %s: spawned pid %d (run %d)", self.name, proc.pid, self.runs)
        # Readers end by themselves at EOF, when the process exits; held here so they are not collected.
        self._stderr_done = asyncio.create_task(self._read_stderr(proc), name=f"{self.name}-stderr")
        stdout = asyncio.create_task(self._read_stdout(proc), name=f"{self.name}-stdout")
        for task in (self._stderr_done, stdout):
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        return proc

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        announced = False
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if not announced and text.startswith(LISTENING):
                try:
                    self.port = int(text.split()[1])
                except (IndexError, ValueError):
                    continue
                announced = True
                self._settle_first(None)
            elif (percent := parse_progress_line(text)) is not None:
                self._saw_progress(percent, proc.pid)
            elif text:
                self._saw_line(text, proc.pid)
                log.info("service %s [pid %d]: %s", self.name, proc.pid, text)
        code = await proc.wait()
        await self._drain_stderr()
        self._settle_first(code)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for text in _lines(proc.stderr):
            if text:
                self._tail.append(text)
                self._saw_line(text, proc.pid)
                log.info("service %s [pid %d]: %s", self.name, proc.pid, text)

    def _saw_line(self, text: str, pid: int) -> None:
        if self._progress_parser is not None and not self._ready:
            percent = self._progress_parser(text)
            if percent is not None:
                self._saw_progress(percent, pid)

    def _saw_progress(self, percent: int, pid: int) -> None:
        if self._ready:
            return
        self.progress = percent
        step = percent // PROGRESS_LOG_STEP
        if step > self._progress_logged:
            self._progress_logged = step
            log.info("service %s [pid %d]: loading its model: %d%% (run %d)", self.name, pid, percent, self.runs)

    def _settle_first(self, code: int | None) -> None:
        if self._first_outcome is not None and not self._first_outcome.done():
            if code == EXIT_CONFIG:
                self.gave_up = f"cannot run here: {self._last_words()}"
            self._first_outcome.set_result(code)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self._stop_signal)
        try:
            await asyncio.wait_for(proc.wait(), self.policy.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _drain_stderr(self) -> None:
        # The exit can be seen before the pipe is read to EOF; the last lines hold the reason.
        if self._stderr_done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_done), 2.0)

    def _last_words(self) -> str:
        return " | ".join(list(self._tail)[-3:]) or "no output on stderr"

    def _give_up(self, reason: str) -> None:
        self._ready = False
        self.state = "failed"
        self.gave_up = reason
        log.error("service %s: giving up: %s", self.name, reason)
        # During start() the caller hears it from the raised SupervisorError instead.
        if self._on_give_up is not None and not self._starting:
            self._on_give_up(self.name, reason)

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """Lines of ``stream``, decoded and stripped, ended by ``\n`` or ``\r`` (a progress bar redraws
    its line with ``\r``); a line longer than ``MAX_LINE`` is cut there."""
    buf = b""
    while chunk := await stream.read(4096):
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        if len(buf) > MAX_LINE:
            parts.append(buf[:MAX_LINE])
            buf = b""
        for part in parts:
            yield part.decode(errors="replace").strip()
    if buf:
        yield buf.decode(errors="replace").strip()


def connect_host(bind_host: str) -> str:
    """Where to reach a server bound to ``bind_host`` from this machine."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host
