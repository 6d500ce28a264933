"""`rmap2p join` start-up failures and CLI output into a closed pipe, as a user meets them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from procs import NodeProc, free_port


def _rmap2p(*args: str) -> list[str]:
    return [sys.executable, "-m", "rmap2p", *args]


def test_http_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        started = time.monotonic()
        cp = subprocess.run(
            _rmap2p("join", "--bind", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{taken}",
                    "--data-dir", str(tmp_path / "n"), "--no-mdns", "--no-services"),
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert cp.returncode == 1, cp
    lines = [line for line in cp.stderr.splitlines() if line.startswith("rmap2p join:")]
    assert len(lines) == 1, cp.stderr
    assert f"cannot listen for HTTP on 127.0.0.1:{taken}" in lines[0] and "uses it" in lines[0], lines[0]
    assert "Traceback" not in cp.stderr
    assert time.monotonic() - started < 30


def test_default_http_port_in_use_names_the_bind_host(tmp_path: Path) -> None:
    """Without --http the node listens on the --bind host, port 8080; taken, it says so."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", 8080))
        except OSError:
            squatter.close()  # someone already has 8080 here: the daemon must refuse all the same
        else:
            squatter.listen()
        cp = subprocess.run(
            _rmap2p("join", "--bind", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "n"),
                    "--no-mdns", "--no-services"),
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert cp.returncode == 1, cp
    assert "cannot listen for HTTP on 127.0.0.1:8080" in cp.stderr, cp.stderr


def test_output_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    node = NodeProc("n0", tmp_path)
    try:
        node.start().wait_healthy()
        for verb in ("status", "gaps"):
            read_end, write_end = os.pipe()
            os.close(read_end)  # like `| head -1` that has already gone
            try:
                cp = subprocess.run(
                    _rmap2p(verb, "--http", node.http), stdout=write_end, stderr=subprocess.PIPE, timeout=30, check=False,
                )
            finally:
                os.close(write_end)
            assert cp.returncode == 0, cp.stderr
            assert cp.stderr == b"", cp.stderr.decode()
    finally:
        node.terminate()


def test_http_address_not_on_this_machine_says_so(tmp_path: Path) -> None:
    cp = subprocess.run(
        _rmap2p("join", "--bind", f"127.0.0.1:{free_port()}", "--http", "192.0.2.1:8080",
                "--data-dir", str(tmp_path / "n"), "--no-mdns", "--no-services"),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert cp.returncode == 1, cp
    assert "cannot listen for HTTP on 192.0.2.1:8080" in cp.stderr and "address of this machine" in cp.stderr, cp.stderr
