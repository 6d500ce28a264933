from __future__ import annotations

import os
import socket
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from rmap2p import hardware
from rmap2p.hardware import (
    STORAGE_DISK_BYTES,
    GpuInfo,
    Hardware,
    Load,
    LoadSampler,
    detect,
    docker_reachable,
    is_public_address,
    public_addresses,
    resolve_worker_type,
    sample_load,
)

Snic = namedtuple("Snic", "family address netmask broadcast ptp")
GIB = 1024**3


def test_detect_on_this_machine(tmp_path) -> None:
    started = time.monotonic()
    hw = detect(tmp_path, docker_timeout=1.0)
    assert time.monotonic() - started < 10
    assert hw.cpu_count >= 1
    assert hw.memory_total > 0
    assert hw.disk_total > 0
    assert hw.gpu_count == len(hw.gpus)
    assert isinstance(hw.has_docker, bool) and isinstance(hw.public_ip, bool)


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this machine has an NVIDIA GPU")
def test_no_gpu_is_not_an_error() -> None:
    hw = detect()
    assert hw.gpu_count == 0 and hw.gpus == ()
    assert hardware.detect_gpus() == ()
    assert sample_load().gpu_utilization == 0.0


def test_detect_measures_nearest_existing_parent_of_data_dir(tmp_path) -> None:
    assert detect(tmp_path / "not" / "yet" / "created").disk_total > 0


def test_sample_load_ranges() -> None:
    with LoadSampler() as sampler:
        for _ in range(3):
            load = sampler.sample()
            assert 0.0 <= load.cpu_percent <= 100.0
            assert 0.0 <= load.memory_percent <= 100.0
            assert 0.0 <= load.gpu_utilization <= 100.0
    assert isinstance(sample_load(), Load)


def _hw(**kw) -> Hardware:
    base = dict(cpu_count=8, memory_total=16 * GIB)
    base.update(kw)
    return Hardware(**base)


A100 = GpuInfo("NVIDIA A100-SXM4-40GB", 40 * GIB, 39 * GIB)


@pytest.mark.parametrize(
    "hw, expected",
    [
        (_hw(gpu_count=1, gpus=(A100,), public_ip=True, has_docker=True), "gpu"),
        (_hw(gpu_count=1, gpus=(A100,)), "gpu"),
        (_hw(public_ip=True, has_docker=True, disk_total=4 * 10**12), "edge"),
        (_hw(public_ip=True), "edge"),
        (_hw(has_docker=True), "storage"),
        (_hw(disk_total=STORAGE_DISK_BYTES), "storage"),
        (_hw(disk_total=STORAGE_DISK_BYTES - 1), "cpu"),
        (_hw(), "cpu"),
    ],
)
def test_auto_rule(hw: Hardware, expected: str) -> None:
    assert resolve_worker_type("auto", hw) == expected
    assert resolve_worker_type(" AUTO ", hw) == expected


@pytest.mark.parametrize("explicit", ["gpu", "cpu", "storage", "edge"])
def test_explicit_type_returned_as_is(explicit: str) -> None:
    gpu_box = _hw(gpu_count=2, gpus=(A100, A100), public_ip=True)
    assert resolve_worker_type(explicit, gpu_box) == explicit
    assert resolve_worker_type(explicit, _hw()) == explicit


def test_unknown_type_rejected() -> None:
    with pytest.raises(ValueError, match="unknown worker type"):
        resolve_worker_type("tpu", _hw())


def test_hardware_values() -> None:
    hw = _hw(gpu_count=2, gpus=(A100, GpuInfo("T4", 16 * GIB, 15 * GIB)))
    assert hw.vram_total == 56 * GIB
    assert hw.gpus[1].name == "T4" and tuple(hw.gpus[1]) == ("T4", 16 * GIB, 15 * GIB)
    with pytest.raises(ValueError):
        _hw(cpu_count=-1)
    with pytest.raises(AttributeError):
        hw.cpu_count = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("127.0.0.1", False),
        ("::1", False),
        ("169.254.1.1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("224.0.0.1", False),
        ("192.0.2.1", False),  # documentation range
        ("garbage", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_public_addresses_from_interface_table() -> None:
    table = {
        "lo": [Snic(socket.AF_INET, "127.0.0.1", None, None, None)],
        "eth0": [
            Snic(socket.AF_INET, "10.0.0.5", None, None, None),
            Snic(socket.AF_INET6, "fe80::1%eth0", None, None, None),
            Snic(socket.AF_PACKET, "00:11:22:33:44:55", None, None, None),
        ],
        "eth1": [Snic(socket.AF_INET, "198.51.100.77", None, None, None)],  # TEST-NET-2: not global
        "wan": [Snic(socket.AF_INET6, "2a01:4f8::1", None, None, None)],
    }
    assert public_addresses(table) == ["2a01:4f8::1"]
    assert public_addresses({"lo": table["lo"]}) == []


def _fake_docker(path: Path, status: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_docker_ping_over_unix_socket(tmp_path) -> None:
    sock_path = tmp_path / "docker.sock"
    thread = _fake_docker(sock_path, b"200 OK")
    assert docker_reachable(1.0, env={}, sockets=[str(sock_path)], use_cli=False)
    thread.join(5)


def test_docker_error_status_is_not_reachable(tmp_path) -> None:
    sock_path = tmp_path / "docker.sock"
    thread = _fake_docker(sock_path, b"500 Internal Server Error")
    assert not docker_reachable(1.0, env={}, sockets=[str(sock_path)], use_cli=False)
    thread.join(5)


def test_docker_host_env_unix(tmp_path) -> None:
    sock_path = tmp_path / "d.sock"
    thread = _fake_docker(sock_path, b"200 OK")
    assert docker_reachable(1.0, env={"DOCKER_HOST": f"unix://{sock_path}"}, use_cli=False)
    thread.join(5)


def test_docker_silent_socket_times_out(tmp_path) -> None:
    sock_path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)  # accepts into the backlog but never answers
    try:
        started = time.monotonic()
        assert not docker_reachable(0.2, env={}, sockets=[str(sock_path)], use_cli=False)
        assert time.monotonic() - started < 2
    finally:
        server.close()


def test_docker_absent(tmp_path) -> None:
    assert not docker_reachable(0.2, env={}, sockets=[str(tmp_path / "none.sock")], use_cli=False)
    assert not docker_reachable(0.2, env={"DOCKER_HOST": "tcp://127.0.0.1:1"}, sockets=[], use_cli=False)
