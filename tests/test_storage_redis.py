"""Redis runners with a real redis-server: data kept across restarts, passwords, replication, failover."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import pid_gone
from storage import ProxyThread, StorageNode, require_binary, server_dir

from services.runners.resp import RespClient, RespError
from services.runners.stateful import make_stateful_runner
from services.supervisor import RestartPolicy

POLICY = RestartPolicy(check_interval=0.2, backoff_initial=0.5, backoff_max=2.0)
WRITES = 1000


@pytest.fixture(scope="module", autouse=True)
def redis_server() -> str:
    return require_binary("redis-server", "redis-server")


@pytest.fixture
def data_root() -> Iterator[Path]:
    with server_dir() as path:  # reachable by the unprivileged redis user, unlike pytest's tmp_path
        yield path


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def redis_user_exists() -> bool:
    try:
        pwd.getpwnam("redis")
    except KeyError:
        return False
    return True


async def connect(port: int, password: str | None) -> RespClient:
    return await RespClient.connect("127.0.0.1", port, password)


async def test_restarted_runner_keeps_its_data_and_its_password(data_root: Path) -> None:
    tmp_path = data_root
    runner = make_stateful_runner("redis", tmp_path, "127.0.0.1", 0, "n1", b"pool secret", policy=POLICY)
    await runner.start()
    try:
        assert await runner.health() in ("starting", "healthy")
        if os.geteuid() == 0 and redis_user_exists():
            assert uid_of(runner.supervisor.pid) != 0, "redis-server runs as root"  # type: ignore[attr-defined]
        client = await connect(runner.port, runner.password)  # type: ignore[arg-type, attr-defined]
        await client.pipeline([("SET", f"k{i}", f"v{i}") for i in range(200)])
        await client.close()
        # No default and no empty password: an unauthenticated client is refused.
        anon = await connect(runner.port, None)  # type: ignore[arg-type]
        with pytest.raises(RespError, match="NOAUTH"):
            await anon.command("GET", "k1")
        await anon.close()
    finally:
        await runner.stop()
    service_dir = tmp_path / "services" / "redis"
    for name in ("password", "redis.conf"):
        assert stat.S_IMODE((service_dir / name).stat().st_mode) == 0o600, name
    password = (service_dir / "password").read_text().strip()
    assert len(password) >= 32

    again = make_stateful_runner("redis", tmp_path, "127.0.0.1", 0, "n1", b"another secret", policy=POLICY)
    await again.start()
    try:
        assert again.password == password  # type: ignore[attr-defined]  # the kept file wins
        client = await connect(again.port, password)  # type: ignore[arg-type]
        values = await client.pipeline([("GET", f"k{i}") for i in range(200)])
        await client.close()
        assert values == [f"v{i}".encode() for i in range(200)]
    finally:
        await again.stop()


async def test_the_server_dies_with_the_runner_process(tmp_path: Path, data_root: Path) -> None:
    node = StorageNode("redis", data_root / "a", tmp_path / "a.log")
    try:
        assert not pid_gone(node.server_pid, timeout=0.2)
        node.kill()
        assert pid_gone(node.server_pid), "redis-server outlived its node (no parent-death signal)"
    finally:
        node.stop()


async def write_acknowledged(port: int, password: str, n: int) -> set[str]:
    """SET n keys, each followed by WAIT 1: the keys whose WAIT saw a replica acknowledge."""
    client = await connect(port, password)
    acked: set[str] = set()
    try:
        for start in range(0, n, 100):
            keys = [f"key:{i}" for i in range(start, min(n, start + 100))]
            commands: list[tuple[str, ...]] = []
            for key in keys:
                commands += [("SET", key, f"value of {key}"), ("WAIT", "1", "2000")]
            replies = await client.pipeline(commands)
            for key, set_reply, wait_reply in zip(keys, replies[0::2], replies[1::2]):
                if set_reply == "OK" and isinstance(wait_reply, int) and wait_reply >= 1:
                    acked.add(key)
    finally:
        await client.close()
    return acked


async def test_failover_keeps_every_acknowledged_write_and_the_old_primary_rejoins_as_replica(tmp_path: Path, data_root: Path) -> None:
    a = StorageNode("redis", data_root / "a", tmp_path / "a.log", role="primary")
    b = StorageNode("redis", data_root / "b", tmp_path / "b.log", role="replica", primary=a.address)
    proxy = ProxyThread("redis")  # the application's local port, forwarded to the primary
    try:
        assert a.password == b.password  # one password per pool
        proxy.set_target(a.address)
        b.wait_replication(lambda s: s["role"] == "replica" and s["linked"])
        a.wait_replication(lambda s: s["replicas"] == 1)

        acked = await write_acknowledged(proxy.port, a.password, WRITES)
        assert len(acked) == WRITES, f"only {len(acked)} of {WRITES} writes acknowledged by the replica"

        # The primary's node dies; its server with it.
        a.kill()
        assert pid_gone(a.server_pid)
        killed = time.monotonic()
        b.set_role("primary")
        proxy.set_target(b.address)
        while True:  # the first write accepted through the local port ends the window without a writable primary
            client = None
            try:
                client = await connect(proxy.port, b.password)
                assert await client.command("SET", "after-failover", "yes") == "OK"
                break
            except (RespError, ConnectionError, OSError) as exc:
                assert time.monotonic() - killed < 10, exc
                if client is not None:
                    await client.close()
                await asyncio.sleep(0.01)
        no_primary_s = time.monotonic() - killed
        values = await client.pipeline([("GET", k) for k in sorted(acked)])
        await client.close()
        missing = [k for k, v in zip(sorted(acked), values) if v != f"value of {k}".encode()]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"

        # The old primary comes back: as a replica of the current one, never as a second primary.
        a2 = StorageNode("redis", data_root / "a", tmp_path / "a2.log", role="replica", primary=b.address)
        try:
            a2.wait_replication(lambda s: s["role"] == "replica" and s["linked"])
            b.wait_replication(lambda s: s["replicas"] == 1)
            old = await connect(a2.port, a2.password)
            with pytest.raises(RespError, match="READONLY"):
                await old.command("SET", "split", "brain")
            deadline = time.monotonic() + 10
            while await old.command("GET", "after-failover") != b"yes":
                assert time.monotonic() < deadline, "the rejoined replica never received the new primary's write"
                await asyncio.sleep(0.05)
            assert await old.command("DBSIZE") == WRITES + 1
            await old.close()
        finally:
            a2.stop()
        proxy_note = f"{proxy.proxy.forwarded} connections forwarded"
        print(f"\nredis: {WRITES} writes acknowledged with WAIT; kill to first write accepted through the forwarded port {no_primary_s * 1000:.0f} ms ({proxy_note})")
    finally:
        proxy.close()
        a.stop()
        b.stop()


async def test_a_crashed_server_is_restarted_in_its_role_with_its_data(tmp_path: Path, data_root: Path) -> None:
    """SIGKILL of redis-server alone (not its node): the supervisor brings it back, same role, same data."""
    a = StorageNode("redis", data_root / "a", tmp_path / "a.log", role="primary")
    b = StorageNode("redis", data_root / "b", tmp_path / "b.log", role="replica", primary=a.address)
    try:
        b.wait_replication(lambda s: s["linked"])
        acked = await write_acknowledged(a.port, a.password, 100)
        assert len(acked) == 100

        os.kill(b.server_pid, signal.SIGKILL)
        assert pid_gone(b.server_pid)
        b.wait_replication(lambda s: s["role"] == "replica" and s["linked"], timeout=30)

        os.kill(a.server_pid, signal.SIGKILL)
        assert pid_gone(a.server_pid)
        state = a.wait_replication(lambda s: s["role"] == "primary", timeout=30)
        assert state["role"] == "primary"
        client = await connect(a.port, a.password)
        values = await client.pipeline([("GET", k) for k in sorted(acked)])
        await client.close()
        # fsync every second: a crash of the server alone may lose up to the last second of
        # the primary's own copy; the keys were written and acknowledged longer ago than that.
        assert sum(v is not None for v in values) == 100
    finally:
        a.stop()
        b.stop()


async def test_a_live_primary_demoted_drops_its_divergent_writes(tmp_path: Path, data_root: Path) -> None:
    """Both sides of a healed partition were primary: the loser becomes a replica live, one history remains."""
    a = StorageNode("redis", data_root / "a", tmp_path / "a.log", role="primary")
    b = StorageNode("redis", data_root / "b", tmp_path / "b.log", role="replica", primary=a.address)
    try:
        b.wait_replication(lambda s: s["linked"])
        assert len(await write_acknowledged(a.port, a.password, 10)) == 10
        b.set_role("primary")  # the partition: b promoted while a still runs
        ca = await connect(a.port, a.password)
        cb = await connect(b.port, b.password)
        assert await ca.command("SET", "only-on-a", "1") == "OK"
        assert await cb.command("SET", "only-on-b", "1") == "OK"
        await ca.close()

        a.set_role("replica", b.address)  # the view decides for b (higher epoch)
        a.wait_replication(lambda s: s["role"] == "replica" and s["linked"])
        ca = await connect(a.port, a.password)
        assert await ca.command("GET", "only-on-b") == b"1"
        assert await ca.command("GET", "only-on-a") is None
        assert await ca.command("GET", "key:9") == b"value of key:9"
        with pytest.raises(RespError, match="READONLY"):
            await ca.command("SET", "x", "y")
        await ca.close()
        await cb.close()
    finally:
        a.stop()
        b.stop()
