"""Encrypted pools between real processes: a wrong key cannot join; rotation loses nobody."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import NodeProc, wait_for

from p2p.keyring import decode_key
from rmap2p.http_api import key_fingerprint

pytestmark = pytest.mark.slow


def rmap2p(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "rmap2p", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def alive_names(node: NodeProc) -> set[str]:
    return {k for k, w in node.view().items() if w["status"] == "alive"}


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[list[NodeProc], NodeProc, str, str]]:
    ring_a = tmp_path / "a.json"
    key_a = rmap2p("keygen", "--key-file", str(ring_a))
    key_b = rmap2p("keygen")
    ring_b = tmp_path / "b.json"
    ring_b.write_text('{"keys": ["%s"], "primary": "%s"}' % (key_b, key_b))
    nodes = []
    for i in range(3):
        ring = tmp_path / f"ring{i}.json"
        shutil.copy(ring_a, ring)
        nodes.append(NodeProc(f"k{i}", tmp_path, extra=["--key-file", str(ring)]))
    stranger = NodeProc("stranger", tmp_path, extra=["--key-file", str(ring_b)])
    everyone = [*nodes, stranger]
    try:
        nodes[0].start().wait_healthy()
        for n in nodes[1:]:
            n.start(join=[nodes[0].gossip]).wait_healthy()
        wait_for(lambda: all(alive_names(n) == {"k0", "k1", "k2"} for n in nodes), 20, "the keyed pool")
        stranger.start(join=[nodes[0].gossip]).wait_healthy()
        yield nodes, stranger, key_a, key_b
    except BaseException:
        for n in everyone:
            print(f"----- {n.name}\n{n.tail(40)}")
        raise
    finally:
        for n in everyone:
            n.kill()


def test_wrong_key_cannot_join_and_rotation_loses_no_member(keyed: tuple[list[NodeProc], NodeProc, str, str]) -> None:
    nodes, stranger, key_a, key_b = keyed
    # The stranger keeps trying to join (it is alone); give it several rounds.
    with pytest.raises(AssertionError):
        wait_for(lambda: len(alive_names(stranger)) > 1 or "stranger" in alive_names(nodes[0]), 8, "a wrong-key join")
    assert alive_names(stranger) == {"stranger"}
    assert all("stranger" not in n.view() for n in nodes)
    # Both sides say why, instead of a silent "no peer answered".
    wait_for(lambda: "could not authenticate with seeds" in stranger.tail(400), 20, "the stranger to say why it is alone")
    wait_for(lambda: "fail authentication: different keyring" in nodes[0].tail(400), 20, "the seed to name the stranger")

    # Watch the pool while keys rotate: nobody may ever be seen as anything but alive.
    problems: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        for _ in range(10_000):
            if stop.is_set():
                return
            for n in nodes:
                try:
                    bad = {k: w["status"] for k, w in n.view().items() if k != "stranger" and w["status"] != "alive"}
                except OSError:
                    continue
                if bad:
                    problems.append(f"{n.name} saw {bad}")
            stop.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for action, key in (("install", key_b), ("use", key_b), ("remove", key_a)):
            for n in nodes:
                rmap2p("keys", action, key, "--http", n.http)
            # Let a few protocol periods pass between the steps, as an operator would.
            wait_for(lambda: all(alive_names(n) >= {"k0", "k1", "k2"} for n in nodes), 10, f"pool after {action}")
            stop.wait(3)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not problems, problems[:5]
    listed = rmap2p("keys", "list", "--json", "--http", nodes[1].http)
    fp_a, fp_b = (key_fingerprint(decode_key(k)) for k in (key_a, key_b))
    assert fp_b in listed and fp_a not in listed
    assert key_b not in listed, "listings show fingerprints, never keys"
    # Now on the same key, the stranger's own retries bring it in.
    wait_for(lambda: all("stranger" in alive_names(n) for n in nodes), 60, "the stranger to join after rotation")
