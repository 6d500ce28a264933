"""``rmap2p status --watch``: redraws a real node's view in a terminal and stops on Ctrl-C without a traceback."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from procs import NodeProc

CLEAR = b"\x1b[H\x1b[2J"


def _read_until(fd: int, done: Callable[[bytes], bool], timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(out):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def test_status_watch_redraws_in_a_terminal_and_ctrl_c_exits_cleanly(tmp_path: Path) -> None:
    node = NodeProc("watched", tmp_path)
    node.start().wait_healthy()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmap2p", "status", "--http", node.http, "--watch", "0.3"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
    )
    os.close(slave)
    try:
        frames = _read_until(master, lambda out: out.count(CLEAR) >= 3, timeout=20)
        assert frames.count(CLEAR) >= 3, frames
        # Each frame is a whole table: clear, header, the node's row, the summary.
        second = frames.split(CLEAR)[2]
        assert b"every 0.3s" in second and b"watched" in second and b"1 alive of 1 known" in second, second
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        _read_until(master, lambda out: False, timeout=0.5)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
        node.terminate()


def test_status_watch_into_a_pipe_writes_frames_without_escape_codes(tmp_path: Path) -> None:
    """Frames follow each other under a header; the watch keeps going while the node is gone."""
    node = NodeProc("piped", tmp_path)
    node.start().wait_healthy()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmap2p", "status", "--http", node.http, "--watch", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum("1 alive of 1 known" in line for line in seen) < 2:
            seen.append(proc.stdout.readline().decode())
        assert sum("1 alive of 1 known" in line for line in seen) >= 2, seen
        node.terminate()
        while time.monotonic() < deadline and not any("no node answers" in line for line in seen):
            seen.append(proc.stdout.readline().decode())
        assert any("no node answers" in line for line in seen), seen
        assert proc.poll() is None, "the watch must outlive a node that went away"
        assert not any("\x1b" in line for line in seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        node.terminate()
