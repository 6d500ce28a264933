"""Redis and PostgreSQL as containers tied to their daemon (services.runners.container_life).

Three layers, each tested where it can really run:

- the container (image, command, user, labels, volumes, network, stdin) is
  a pure function: a table here, and the Docker SDK's own translation of it
  (``StdinOnce``: the engine closes the server's stdin when our one
  attached socket closes);
- the wrapper is the mechanism: it runs here with the host's ``sh`` and a
  real ``redis-server`` / ``postgres``, and closing its stdin, or killing
  the process that holds the stdin by SIGKILL, stops the server;
- the live container path (``container_attach`` and the engine) runs only
  where a Docker engine answers; elsewhere those tests skip and say why.
  No container is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.runner import RunnerError
from services.runners.container_life import (
    HELPER,
    IMAGES,
    SPEC_ENV,
    WRAPPER,
    contained_argv,
    db_container_spec,
    helper_argv,
    helper_env,
    leftover_filters,
    passwd_text,
    remove_leftovers,
    wrapper_argv,
)
from services.runners.native import RunAs
from services.runners.postgres import (
    PostgresRunner,
    accepting_connections,
    find_bin_dir,
)
from services.runners.redis_server import RedisRunner
from services.runners.stateful import make_stateful_runner
from services.storage_probe import docker_engine_present
from tests.storage import server_dir

PASSWORD = "pool-derived-password-0123456789"
needs_engine = pytest.mark.skipif(
    not docker_engine_present(),
    reason="no Docker engine answers on this machine (docker.from_env().ping() fails): the containerised Redis/PostgreSQL cannot run here",
)


# ------------------------------------------------------------------ the spec (pure)

SPECS = [
    # (engine, service, env, tool, uid, image, signal)
    ("redis", "", {}, "", 1000, "redis:7.4", "TERM"),
    ("redis", "", {"RMAP2P_REDIS_IMAGE": "redis:7.2"}, "", 0, "redis:7.2", "TERM"),
    ("postgres", "", {}, "", 101, "postgres:15", "INT"),
    ("postgres", "postgres", {"RMAP2P_POSTGRES_IMAGE": "postgres:16"}, "initdb", 999, "postgres:16", "INT"),
    ("redis", "cache", {}, "", 1000, "redis:7.4", "TERM"),
]


@pytest.mark.parametrize(("engine", "service", "env", "tool", "uid", "image", "sig"), SPECS)
def test_container_spec(tmp_path: Path, engine: str, service: str, env: dict[str, str], tool: str, uid: int, image: str, sig: str) -> None:
    root = (tmp_path / "services" / (service or engine)).resolve()
    argv = [engine + "-server", str(root / "x.conf")]
    spec = db_container_spec(engine, root, "node/a", argv, uid=uid, gid=uid + 1, user_name="u", env=env, tool=tool, service=service, program_env={"PGPASSWORD": "p"})
    kw = spec.create_kwargs()
    assert kw["image"] == image
    if tool:
        assert kw["name"].startswith(f"rmap2p-node-a-{service or engine}-{tool}-")
    else:
        assert kw["name"] == f"rmap2p-node-a-{service or engine}"
    # The image's entrypoint script is replaced by the wrapper; the program is its arguments.
    assert [*kw["entrypoint"], *kw["command"]] == ["sh", "-c", WRAPPER, "rmap2p-wrapper", sig, *argv]
    assert kw["user"] == f"{uid}:{uid + 1}"
    # Same path inside and out (config files name host paths); passwd names the uid the server runs as.
    assert kw["volumes"] == {str(root): {"bind": str(root), "mode": "rw"}, str(root / "container-passwd"): {"bind": "/etc/passwd", "mode": "ro"}}
    assert kw["environment"] == {"LC_ALL": "C", "PGPASSWORD": "p"}
    labels = {"rmap2p.node": "node/a", "rmap2p.service": service or engine}
    assert kw["labels"] == ({**labels, "rmap2p.tool": tool} if tool else labels)
    # Host network: the server listens on the service host and port itself, and reaches a primary at the address the pool gossips.
    assert kw["network_mode"] == "host"
    assert "ports" not in kw
    assert (kw["stdin_open"], kw["detach"]) == (True, False)
    assert json.loads(spec.to_json()) == {"create": kw}


def test_the_sdk_opens_stdin_once(tmp_path: Path) -> None:
    """What the engine is sent: stdin open, closed when the one attached client leaves (StdinOnce), no TTY."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    spec = db_container_spec("redis", tmp_path, "n1", ["redis-server"], uid=1000, gid=1000, user_name="u", env={})
    args = _create_container_args({**spec.create_kwargs(), "version": "1.41"})
    host_config = args.pop("host_config")
    args.pop("version", None)
    assert args.pop("name") == "rmap2p-n1-redis"
    config = ContainerConfig("1.41", **args)
    assert (config["OpenStdin"], config["StdinOnce"], config["Tty"]) == (True, True, False)
    assert config["Labels"] == {"rmap2p.node": "n1", "rmap2p.service": "redis"}
    assert config["User"] == "1000:1000"
    assert host_config["NetworkMode"] == "host"
    assert f"{tmp_path.resolve()}/container-passwd:/etc/passwd:ro" in host_config["Binds"]


def test_spec_refuses_other_engines(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        db_container_spec("minio", tmp_path, "n1", ["x"], uid=1, gid=1, user_name="u", env={})
    assert set(IMAGES) == {"redis", "postgres"}


def test_passwd_and_filters() -> None:
    assert passwd_text(0, 0, "x") == "root:x:0:0:root:/root:/bin/sh\n"
    assert passwd_text(101, 104, "postgres").splitlines()[1] == "postgres:x:101:104:postgres:/tmp:/bin/sh"
    assert leftover_filters("node-a") == {"label": ["rmap2p.node=node-a"]}


def test_helper_env_keeps_the_spec_off_argv(tmp_path: Path) -> None:
    spec = db_container_spec("postgres", tmp_path, "n1", ["pg_basebackup"], uid=1, gid=1, user_name="u", env={}, program_env={"PGPASSWORD": "secret"}, tool="pg_basebackup")
    env = helper_env(spec, {"DOCKER_HOST": "tcp://h:2375", "SECRET": "x", "PATH": "/bin"})
    assert env == {"DOCKER_HOST": "tcp://h:2375", "PATH": "/bin", SPEC_ENV: spec.to_json()}
    assert not any("secret" in a for a in helper_argv())


def test_contained_argv_is_killed_with_the_daemon(tmp_path: Path) -> None:
    as_user = RunAs("postgres", 101, 104)
    argv, env = contained_argv("postgres", "postgres", tmp_path, "n1", ["postgres", "-D", str(tmp_path / "pgdata")], as_user, {"DOCKER_HOST": "unix:///x"})
    assert argv[:2] == [shutil.which("setpriv"), "--pdeathsig"] and argv[2] == "KILL"
    assert argv[3:] == [sys.executable, str(HELPER)]
    spec = json.loads(env.pop(SPEC_ENV))["create"]
    assert spec["user"] == "101:104"
    assert spec["command"][-3:] == ["postgres", "-D", str(tmp_path / "pgdata")]
    assert env == {"DOCKER_HOST": "unix:///x"}
    assert (tmp_path / "container-passwd").read_text() == passwd_text(101, 104, "postgres")


def test_factory_picks_the_native_runner_where_the_binary_is(tmp_path: Path) -> None:
    runner = make_stateful_runner("redis", tmp_path, "127.0.0.1", 0, "n1", b"pool secret")
    assert isinstance(runner, RedisRunner)
    assert runner._docker_env is None if shutil.which("redis-server") else runner._docker_env is not None
    runner = make_stateful_runner("postgres", tmp_path, "127.0.0.1", 0, "n1", b"pool secret")
    assert isinstance(runner, PostgresRunner)
    assert runner._docker_env is None if find_bin_dir() else runner._docker_env is not None


# ------------------------------------------------------------------ the wrapper, for real

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _redis_argv(port: int) -> list[str]:
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@needs_redis
def test_wrapper_stops_the_server_when_stdin_closes() -> None:
    port = _free_port()
    proc = subprocess.Popen(wrapper_argv("TERM", _redis_argv(port)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: _listening(port), 10), "redis-server did not listen"
        time.sleep(0.5)
        assert proc.poll() is None, "the wrapper must not take the empty async stdin for EOF"
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(10) == 0
        assert not _listening(port)
        assert proc.stdout is not None
        assert b"Received SIGTERM" in proc.stdout.read()
    finally:
        proc.kill()


@needs_redis
def test_server_stops_when_the_stdin_holder_is_killed(tmp_path: Path) -> None:
    """The daemon's situation: the process holding the attached stdin dies by SIGKILL; the server follows."""
    port = _free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE); time.sleep(3600)", *wrapper_argv("TERM", _redis_argv(port))],
        start_new_session=True,
    )
    try:
        assert _wait(lambda: _listening(port), 10)
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        assert _wait(lambda: not _listening(port), 10), "redis-server outlived the holder of its stdin"
    finally:
        # Only on failure is anything of that session (wrapper, server) still there.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(5)


@needs_redis
def test_wrapper_ends_with_its_server() -> None:
    """A server that exits by itself ends the container (the supervisor sees it), with its status."""
    port = _free_port()
    proc = subprocess.Popen(wrapper_argv("TERM", [*_redis_argv(port), "--no-such-option", "x"]), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proc.wait(10) == 1
    finally:
        proc.kill()


PG_BIN = find_bin_dir()
needs_pg = pytest.mark.skipif(PG_BIN is None or shutil.which("setpriv") is None, reason="PostgreSQL's server programs (or setpriv) are not installed")


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", *argv]


def _accepting(port: int) -> bool:
    return asyncio.run(accepting_connections("127.0.0.1", port))


@needs_pg
def test_wrapper_fast_shuts_postgres_down_on_eof() -> None:
    with server_dir() as tmp_path:
        _postgres_under_the_wrapper(tmp_path)


def _postgres_under_the_wrapper(tmp_path: Path) -> None:
    assert PG_BIN is not None
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--no-instructions"]), check=True, capture_output=True)
    port = _free_port()
    argv = _as_postgres([str(PG_BIN / "postgres"), "-D", str(pgdata), "-p", str(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
    proc = subprocess.Popen(wrapper_argv("INT", argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: _accepting(port), 30), "postgres never accepted connections"
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        assert "fast shutdown request" in proc.stdout.read().decode()
        assert not _accepting(port)
    finally:
        proc.kill()
        proc.wait(5)


@needs_redis
def test_accepting_connections_wants_postgres() -> None:
    """A port that answers but is not PostgreSQL (here Redis) is not 'ready'; nothing listening neither."""
    port = _free_port()
    assert not _accepting(port)
    proc = subprocess.Popen(wrapper_argv("TERM", _redis_argv(port)), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert _wait(lambda: _listening(port), 10)
        assert not _accepting(port)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


# ------------------------------------------------------------------ without / with an engine

async def test_containerised_redis_refuses_to_start_without_an_engine(tmp_path: Path) -> None:
    if docker_engine_present():
        pytest.skip("a Docker engine answers here")
    runner = RedisRunner(tmp_path / "redis", "127.0.0.1", 0, "n1", PASSWORD, docker_env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    with pytest.raises(RunnerError, match="exited before it was ready"):
        await runner.start()
    assert runner.port is None
    assert remove_leftovers("n1", {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}) == []


@needs_engine
async def test_containerised_redis_dies_with_its_holder(tmp_path: Path) -> None:
    """The real thing: Redis in its official image; SIGKILL of the helper holding stdin stops the container."""
    import docker

    runner = RedisRunner(tmp_path / "redis", "127.0.0.1", 0, "ctest", PASSWORD, docker_env=dict(os.environ))
    await runner.start()
    try:
        assert await runner.command("SET", "k", "v") == "OK"
        assert runner.supervisor is not None and runner.supervisor.pid is not None
        os.kill(runner.supervisor.pid, signal.SIGKILL)
        client = docker.from_env()
        name = "rmap2p-ctest-redis"

        def stopped() -> bool:
            try:
                return client.containers.get(name).status != "running"
            except docker.errors.NotFound:
                return True

        assert _wait(stopped, 20), "the container outlived the process holding its stdin"
    finally:
        await runner.stop()
        remove_leftovers("ctest")


@needs_engine
async def test_containerised_postgres_replicates_and_promotes() -> None:
    """Primary and standby both in containers: initdb, pg_basebackup, a row streamed, the standby promoted by SQL."""
    with server_dir() as root:
        env = dict(os.environ)
        a = PostgresRunner(root / "a", "127.0.0.1", 0, "ctest-a", PASSWORD, docker_env=env)
        b = PostgresRunner(root / "b", "127.0.0.1", 0, "ctest-b", PASSWORD, docker_env=env)
        try:
            await a.start()
            await a.sql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
            assert a.endpoint is not None
            await b.set_role("replica", a.endpoint)
            await b.start()
            deadline = time.monotonic() + 60
            while (await b.sql("SELECT coalesce(sum(v), 0) FROM t")).strip() != "42":
                assert time.monotonic() < deadline, "the row never reached the standby"
                await asyncio.sleep(0.5)
            await a.stop()
            await b.set_role("primary", None)
            await b.sql("INSERT INTO t VALUES (1)")
            assert (await b.sql("SELECT sum(v) FROM t")).strip() == "43"
        finally:
            await b.stop()
            await a.stop()
            remove_leftovers("ctest-a")
            remove_leftovers("ctest-b")
