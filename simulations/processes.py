"""What the loopback benchmarks share about the daemons they start: waiting on them and stopping them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.3) -> None:
    """Poll ``pred`` until it is true; a daemon not up yet (refused, bad JSON, missing key) counts as false.

    Raises SystemExit naming ``what`` after ``timeout`` seconds: a benchmark has no use for a half-started pool.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM (a daemon leaves the pool on it), SIGKILL after ``grace`` seconds; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
