"""A node under a flood of random, truncated and hostile datagrams and TCP frames keeps working."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
from procs import NodeProc, wait_for

from membership import wire
from membership.messages import Alive, Ping, PushPull, Suspect

pytestmark = pytest.mark.slow


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[NodeProc]]:
    nodes = [NodeProc(f"h{i}", tmp_path) for i in range(3)]
    try:
        nodes[0].start().wait_healthy()
        for n in nodes[1:]:
            n.start(join=[nodes[0].gossip]).wait_healthy()
        wait_for(lambda: all(len([w for w in n.view().values() if w["status"] == "alive"]) == 3 for n in nodes), 20, "3 alive")
        yield nodes
    except BaseException:
        for n in nodes:
            print(f"----- {n.name} -----\n{n.tail(60)}")
        raise
    finally:
        for n in nodes:
            n.kill()


def hostile_datagrams(rng: random.Random, valid: list[bytes]) -> Iterator[bytes]:
    while True:
        kind = rng.randrange(6)
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 1500))
        elif kind == 1:
            v = rng.choice(valid)
            yield v[: rng.randrange(0, len(v))]
        elif kind == 2:
            v = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                v[rng.randrange(len(v))] = rng.randrange(256)
            yield bytes(v)
        elif kind == 3:
            # Length claims far beyond the datagram: 4 billion array items, a 4 GiB string.
            yield bytes([wire.VERSION]) + rng.choice([b"\xdd\xff\xff\xff\xff", b"\x91\xdb\x7f\xff\xff\xff", b"\x91\xc6\xff\xff\xff\xff"])
        elif kind == 4:
            # Well-formed messages with forged or absurd content: unsigned alives, suspicions of strangers.
            node = rng.randbytes(8).hex()
            msgs = [
                Alive(node, rng.randrange(2**40), "127.0.0.1", rng.randrange(1, 65535), b"\x90", bytes(32), rng.randbytes(64)),
                Suspect(node, 1, "x"),
                Ping(rng.randrange(2**31), node, node),
            ]
            yield wire.encode_datagram(msgs)
        else:
            yield bytes([wire.VERSION]) + msgpack.packb([[rng.randrange(300), *[rng.randrange(2**31) for _ in range(rng.randrange(8))]]])


def test_flood_of_hostile_input_leaves_the_node_healthy_and_its_memory_bounded(trio: list[NodeProc]) -> None:
    target = trio[0]
    assert target.proc is not None
    proc = psutil.Process(target.proc.pid)
    rss_before = proc.memory_info().rss
    rng = random.Random(1234)
    valid = [wire.encode_datagram([Ping(7, "abc", "def")]), wire.encode_datagram([Suspect("x" * 16, 3, "y" * 16)])]
    gen = hostile_datagrams(rng, valid)
    addr = ("127.0.0.1", target.gossip_port)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for round_ in range(10):
            for i in range(3000):
                try:
                    s.sendto(next(gen), addr)
                    sent += 1
                except OSError:
                    pass
                if i % 50 == 0:
                    # Pace the flood so most of it reaches the daemon rather than the kernel's drop counter.
                    time.sleep(0.003)
            # The node answers while under fire.
            assert target.get("/health", timeout=5)["status"] == "ok"
    # Hostile TCP frames: garbage, a 2 GiB length claim, truncation, a push-pull from another cluster.
    frames = [
        struct.pack(">I", 2**31) + b"xx",
        struct.pack(">I", 100) + b"short",
        rng.randbytes(64),
        struct.pack(">I", 5) + b"\x01\xc1\xc1\xc1\xc1",
    ]
    pp = wire.encode_frame(PushPull("another-cluster", True, ()))
    frames.append(struct.pack(">I", len(pp)) + pp)
    for i in range(400):
        with socket.create_connection(addr, timeout=5) as c:
            try:
                c.sendall(frames[i % len(frames)])
                c.shutdown(socket.SHUT_WR)
                c.settimeout(2)
                c.recv(1024)
            except OSError:
                pass
    assert target.get("/health")["status"] == "ok"
    stats = target.get("/api/admin/stats")
    dropped = stats["membership"]["malformed"] + stats["membership"]["rejected"] + sum(
        stats["udp"].get(k, 0) for k in ("dropped_full", "dropped_oversize", "errors")
    )
    received = stats["udp"]["received"] + stats["udp"].get("dropped_oversize", 0)
    assert received > 10_000, f"only {received} of {sent} datagrams reached the daemon"
    assert dropped > 0.5 * received, stats
    # Membership is intact: the other two are alive and no forged stranger got in.
    view = target.view()
    assert {k for k, w in view.items() if w["status"] == "alive"} == {"h0", "h1", "h2"}
    assert len(view) == 3, "a forged alive must never add a member"
    growth = proc.memory_info().rss - rss_before
    assert growth < 64 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    # And it still gossips: the others see it alive.
    for n in trio[1:]:
        assert n.view()["h0"]["status"] == "alive"
