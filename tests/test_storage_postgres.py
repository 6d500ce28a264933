"""PostgreSQL runners with the real server: unprivileged, rows kept across restarts, streaming replication, failover."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import pid_gone
from storage import ProxyThread, StorageNode, require_binary, server_dir

from allocator.replicas import Roles
from services.replication import ReplicaDriver
from services.runners.postgres import conninfo, find_bin_dir
from services.runners.stateful import make_stateful_runner, service_dir
from services.stateful import Endpoint
from services.supervisor import RestartPolicy

POLICY = RestartPolicy(check_interval=0.2, backoff_initial=0.5, backoff_max=2.0)
ROWS = 1000


@pytest.fixture
def data_root() -> Iterator[Path]:
    with server_dir() as path:
        yield path


@pytest.fixture(scope="module", autouse=True)
def postgres_bin() -> Path:
    if find_bin_dir() is None:
        require_binary("pg_ctlcluster", "postgresql")
    found = find_bin_dir()
    if found is None:
        pytest.skip("PostgreSQL's server programs not found after installing postgresql")
    return found


def psql_file(bin_dir: Path, port: int, password: str, script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` statement by statement (each its own transaction) through a real client."""
    path = tmp / f"script-{time.monotonic_ns()}.sql"
    path.write_text(script)
    return subprocess.run(
        [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(path), conninfo(Endpoint("127.0.0.1", port), password)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


async def test_rows_survive_a_restart_and_the_server_runs_unprivileged(data_root: Path) -> None:
    data = data_root / "n1"
    runner = make_stateful_runner("postgres", data, "127.0.0.1", 0, "n1", b"pool secret", policy=POLICY)
    await runner.start()
    try:
        await runner.sql("CREATE TABLE items (id int PRIMARY KEY, body text); INSERT INTO items SELECT i, 'row ' || i FROM generate_series(1, 500) i")  # type: ignore[attr-defined]
        if os.geteuid() == 0:
            assert uid_of(runner.supervisor.pid) != 0, "postgres runs as root"  # type: ignore[attr-defined]
    finally:
        await runner.stop()
    service_dir = data / "services" / "postgres"
    assert stat.S_IMODE((service_dir / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE((service_dir / "pgdata").stat().st_mode) == 0o700
    password = (service_dir / "password").read_text().strip()
    assert len(password) >= 32

    again = make_stateful_runner("postgres", data, "127.0.0.1", 0, "n1", b"pool secret", policy=POLICY)
    await again.start()
    try:
        out = await again.sql("SELECT count(*), sum(id) FROM items")  # type: ignore[attr-defined]
        assert out.strip() == f"500|{sum(range(1, 501))}"
        # The password is required: a wrong one is refused.
        bad = subprocess.run(
            [str(find_bin_dir() / "psql"), "-X", "-c", "SELECT 1", conninfo(again.endpoint, "postgres")],  # type: ignore[operator, arg-type]
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    finally:
        await again.stop()


def test_failover_keeps_every_committed_row_and_the_old_primary_rejoins_as_standby(tmp_path: Path, data_root: Path, postgres_bin: Path) -> None:
    base = data_root
    a = StorageNode("postgres", base / "a", tmp_path / "a.log", role="primary", synchronous=True)
    b = StorageNode("postgres", base / "b", tmp_path / "b.log", role="replica", primary=a.address, synchronous=True)
    proxy = ProxyThread("postgres")  # the application's local port, forwarded to the primary
    try:
        proxy.set_target(a.address)
        b.wait_replication(lambda s: s["role"] == "replica" and s["linked"], timeout=60)
        a.wait_replication(lambda s: s["replicas"] == 1, timeout=60)
        a.sql("CREATE TABLE items (id int PRIMARY KEY, body text)")
        started = time.monotonic()
        inserts = "".join(f"INSERT INTO items VALUES ({i}, 'row {i}');\n" for i in range(1, ROWS + 1))
        done = psql_file(postgres_bin, proxy.port, a.password, inserts, tmp_path)
        assert done.returncode == 0, done.stderr
        commit_s = time.monotonic() - started

        a.kill()
        assert pid_gone(a.server_pid), "postgres outlived its node"
        killed = time.monotonic()
        b.set_role("primary")
        b.request("set_synchronous", synchronous=False)  # alone now: a synchronous commit would wait forever
        proxy.set_target(b.address)
        while True:  # through the forwarded port, as the application would
            done = psql_file(postgres_bin, proxy.port, b.password, "INSERT INTO items VALUES (0, 'after failover');\n", tmp_path)
            if done.returncode == 0:
                break
            assert time.monotonic() - killed < 60, done.stderr
            time.sleep(0.05)
        no_primary_s = time.monotonic() - killed
        assert b.sql("SELECT count(*), sum(id) FROM items").strip() == f"{ROWS + 1}|{sum(range(1, ROWS + 1))}"

        a2 = StorageNode("postgres", base / "a", tmp_path / "a2.log", role="replica", primary=b.address)
        try:
            a2.wait_replication(lambda s: s["role"] == "replica" and s["linked"], timeout=60)
            # Rewound onto the new timeline (pg_rewind), not set aside and copied afresh.
            assert not (base / "a" / "services" / "postgres" / "pgdata.discarded").exists()
            deadline = time.monotonic() + 30
            while a2.sql("SELECT count(*) FROM items").strip() != str(ROWS + 1):
                assert time.monotonic() < deadline, "the rejoined standby never replayed the new primary's row"
                time.sleep(0.1)
            with pytest.raises(RuntimeError, match="read-only transaction"):
                a2.sql("INSERT INTO items VALUES (-1, 'split brain')")
        finally:
            a2.stop()
        print(f"\npostgres: {ROWS} synchronous commits in {commit_s:.1f} s; kill to first write accepted through the forwarded port {no_primary_s * 1000:.0f} ms")
    finally:
        proxy.close()
        a.stop()
        b.stop()


def test_a_live_primary_demoted_is_rewound_onto_the_new_primary(tmp_path: Path, data_root: Path) -> None:
    """Both sides of a healed partition were primary: the loser stops, pg_rewind, follows; one history remains."""
    a = StorageNode("postgres", data_root / "a", tmp_path / "a.log", role="primary")
    b = StorageNode("postgres", data_root / "b", tmp_path / "b.log", role="replica", primary=a.address)
    try:
        b.wait_replication(lambda s: s["linked"], timeout=60)
        a.sql("CREATE TABLE t (id int PRIMARY KEY, side text); INSERT INTO t VALUES (1, 'both')")
        b.wait_replication(lambda s: s["offset"] >= a.request("replication")["offset"], timeout=30)
        b.set_role("primary")  # the partition: b promoted while a still runs
        a.sql("INSERT INTO t VALUES (2, 'only a')")
        b.sql("INSERT INTO t VALUES (3, 'only b')")

        a.set_role("replica", b.address)  # live demotion: stop, rewind, start as standby
        a.wait_replication(lambda s: s["role"] == "replica" and s["linked"], timeout=60)
        deadline = time.monotonic() + 30
        while a.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t").strip() != "1,3":
            assert time.monotonic() < deadline, a.sql("SELECT * FROM t")
            time.sleep(0.1)
        assert not (data_root / "a" / "services" / "postgres" / "pgdata.discarded").exists(), "copied afresh, not rewound"
        with pytest.raises(RuntimeError, match="read-only transaction"):
            a.sql("INSERT INTO t VALUES (4, 'split brain')")
    finally:
        a.stop()
        b.stop()


def test_a_standby_restarted_as_primary_forks_a_new_timeline(tmp_path: Path, data_root: Path) -> None:
    """Both nodes down; the replica's node comes back first and the view makes it primary."""
    a = StorageNode("postgres", data_root / "a", tmp_path / "a.log", role="primary")
    b = StorageNode("postgres", data_root / "b", tmp_path / "b.log", role="replica", primary=a.address)
    try:
        b.wait_replication(lambda s: s["linked"], timeout=60)
        a.sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        b.wait_replication(lambda s: s["offset"] >= a.request("replication")["offset"], timeout=30)
    finally:
        a.stop()
        b.stop()
    b = StorageNode("postgres", data_root / "b", tmp_path / "b2.log", role="primary")
    try:
        assert b.sql("SELECT count(*) FROM t").strip() == "100"
        b.sql("INSERT INTO t VALUES (101)")
        b.sql("CHECKPOINT")
        assert int(b.sql("SELECT timeline_id FROM pg_control_checkpoint()").strip()) > 1
        a = StorageNode("postgres", data_root / "a", tmp_path / "a2.log", role="replica", primary=b.address)
        try:
            a.wait_replication(lambda s: s["role"] == "replica" and s["linked"], timeout=60)
            deadline = time.monotonic() + 30
            while a.sql("SELECT count(*) FROM t").strip() != "101":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            a.stop()
    finally:
        b.stop()


async def test_commits_wait_for_a_standby_until_a_majority_answers_after_the_replica_is_lost(data_root: Path) -> None:
    """The primary keeps synchronous commit on when its replica leaves the view until ``heard_since`` says a
    majority answered after that; a primary cut off from the pool must not take commits alone meanwhile."""
    a = make_stateful_runner("postgres", data_root / "a", "127.0.0.1", 0, "a", b"pool secret", policy=POLICY, synchronous=True)
    b = make_stateful_runner("postgres", data_root / "b", "127.0.0.1", 0, "b", b"pool secret", policy=POLICY, synchronous=True)
    da = ReplicaDriver("postgres", "a", a, service_dir(data_root / "a", "postgres"), synchronous=True)
    db = ReplicaDriver("postgres", "b", b, service_dir(data_root / "b", "postgres"), synchronous=True)
    both = Roles("a", 1, ("b",), False)
    try:
        await da.apply(both, {})
        await a.start()
        await da.apply(both, {})  # running now: commits wait for a standby
        await db.apply(both, {"a": a.endpoint})  # type: ignore[dict-item]
        await b.start()
        deadline = time.monotonic() + 60
        while (await a.replication()).replicas != 1:
            assert time.monotonic() < deadline, "the standby never streamed"
            await asyncio.sleep(0.2)
        await a.sql("CREATE TABLE items (id int PRIMARY KEY)")

        await b.stop()  # the replica's node is gone; a commit now waits
        pending = asyncio.create_task(a.sql("INSERT INTO items VALUES (1)"))
        alone = Roles("a", 1, (), False)
        asked: list[float] = []

        def nobody(since: float) -> bool:
            asked.append(since)
            return False

        await da.apply(alone, {}, now=100.0, heard_since=nobody)
        await da.apply(alone, {}, now=101.0, heard_since=nobody)
        await asyncio.sleep(1.5)
        assert not pending.done(), "a commit was acknowledged with no standby and no fresh majority"
        assert da.waits_for_majority and asked == [100.0, 100.0]  # always since the replica was lost, not since the last look

        await da.apply(alone, {}, now=102.0, heard_since=lambda since: since == 100.0)
        await asyncio.wait_for(pending, 30)
        assert not da.waits_for_majority
        assert (await a.sql("SELECT count(*) FROM items")).strip() == "1"
        # Without a standby and with the majority heard, commits no longer wait.
        await asyncio.wait_for(a.sql("INSERT INTO items VALUES (2)"), 30)
    finally:
        await a.stop()
        await b.stop()
