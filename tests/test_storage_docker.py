"""MinIO, Neo4j and ChromaDB through the Docker SDK: the container spec and the probe's answer (pure), the live path where an engine answers.

Where no Docker engine answers (this project's test machines), the live
tests skip and say so: the runner's container path cannot run without an
engine, and no engine is faked. The pure parts (what the container gets,
what the probe says) and the runner's refusal without an engine run
everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.runner import RunnerError
from services.runners.docker_runner import (
    DockerRunner,
    container_name,
    container_spec,
    published_port,
)
from services.runners.stateful import make_single_copy_runner
from services.storage_probe import docker_engine_present, probe_storage

PASSWORD = "pool-derived-password-0123456789"


def test_minio_container_spec(tmp_path: Path) -> None:
    spec = container_spec("minio", tmp_path / "services" / "minio", "10.0.0.5", 9000, "node-a", PASSWORD, env={})
    kw = spec.run_kwargs()
    assert kw["image"] == "minio/minio"
    assert kw["name"] == "rmap2p-node-a-minio"
    assert kw["ports"] == {"9000/tcp": ("10.0.0.5", 9000)}
    assert kw["volumes"] == {str((tmp_path / "services" / "minio" / "data").resolve()): {"bind": "/data", "mode": "rw"}}
    assert kw["environment"] == {"MINIO_ROOT_USER": "rmap2p", "MINIO_ROOT_PASSWORD": PASSWORD}
    assert kw["command"] == ["server", "/data"]
    assert kw["detach"] is True
    assert kw["restart_policy"]["Name"] == "on-failure"
    assert kw["labels"] == {"rmap2p.node": "node-a", "rmap2p.service": "minio"}
    assert (spec.ready_port, spec.ready_path) == ("9000/tcp", "/minio/health/live")


def test_neo4j_container_spec(tmp_path: Path) -> None:
    root = (tmp_path / "neo").resolve()
    standard = container_spec("neo4j", tmp_path / "neo", "127.0.0.1", 7474, "n1", PASSWORD, env={})
    assert standard.image == "neo4j:5-community"
    assert standard.ports == {"7474/tcp": ("127.0.0.1", 7474), "7687/tcp": ("127.0.0.1", 7687)}
    assert standard.volumes == {str(root / "data"): {"bind": "/data", "mode": "rw"}, str(root / "logs"): {"bind": "/logs", "mode": "rw"}}
    assert standard.environment == {"NEO4J_AUTH": f"neo4j/{PASSWORD}"}
    assert standard.command is None
    # Ephemeral ports (tests, --service-proxy): Docker picks both host ports.
    ephemeral = container_spec("neo4j", tmp_path / "neo", "127.0.0.1", 0, "n1", PASSWORD, env={"RMAP2P_NEO4J_IMAGE": "neo4j:5.26"})
    assert ephemeral.ports == {"7474/tcp": ("127.0.0.1", None), "7687/tcp": ("127.0.0.1", None)}
    assert ephemeral.image == "neo4j:5.26"


def test_spec_refusals_and_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without a password"):
        container_spec("minio", tmp_path, "127.0.0.1", 0, "n1", "", env={})
    with pytest.raises(KeyError):
        container_spec("redis", tmp_path, "127.0.0.1", 0, "n1", PASSWORD, env={})
    assert container_name("a b/c:1", "neo4j") == "rmap2p-a-b-c-1-neo4j"
    assert container_name("///", "minio") == "rmap2p-node-minio"


def test_chromadb_container_spec(tmp_path: Path) -> None:
    spec = container_spec("chromadb", tmp_path / "services" / "chromadb", "10.0.0.5", 8000, "node-a", PASSWORD, env={})
    # The native runner's layout (data/ is Chroma's persistence directory), so a node can switch backends on the same data.
    assert spec.volumes == {str((tmp_path / "services" / "chromadb" / "data").resolve()): {"bind": "/data", "mode": "rw"}}
    assert spec.ports == {"8000/tcp": ("10.0.0.5", 8000)}
    assert spec.environment == {"IS_PERSISTENT": "TRUE", "PERSIST_DIRECTORY": "/data", "ANONYMIZED_TELEMETRY": "FALSE"}
    assert (spec.ready_port, spec.ready_path) == ("8000/tcp", "/api/v2/heartbeat")
    assert spec.name == "rmap2p-node-a-chromadb"
    try:
        import chromadb
    except ImportError:
        pass
    else:  # the image runs the same server version as the storage extra's package
        assert spec.image == f"chromadb/chroma:{chromadb.__version__}"
    assert container_spec("chromadb", tmp_path, "127.0.0.1", 0, "n", PASSWORD, env={"RMAP2P_CHROMADB_IMAGE": "mirror/chroma:x"}).image == "mirror/chroma:x"


def test_chromadb_runs_natively_where_it_can_else_as_a_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runners import chroma

    monkeypatch.setattr(chroma, "chroma_importable", lambda: True)
    assert isinstance(make_single_copy_runner("chromadb", tmp_path, "127.0.0.1", 0, "n1", b"pool secret", lambda: None), chroma.ChromaRunner)
    monkeypatch.setattr(chroma, "chroma_importable", lambda: False)
    runner = make_single_copy_runner("chromadb", tmp_path, "127.0.0.1", 0, "n1", b"pool secret", lambda: None)
    assert isinstance(runner, DockerRunner)
    assert runner.spec.volumes == {str((tmp_path / "services" / "chromadb" / "data").resolve()): {"bind": "/data", "mode": "rw"}}


async def test_chromadb_container_refuses_to_start_without_an_engine(tmp_path: Path) -> None:
    if docker_engine_present():
        pytest.skip("a Docker engine answers here")
    runner = DockerRunner("chromadb", tmp_path / "services" / "chromadb", "127.0.0.1", 0, "n1", PASSWORD)
    with pytest.raises(RunnerError, match="no Docker engine|Docker SDK is not installed"):
        await runner.start()
    assert runner.port is None


def test_published_port() -> None:
    ports = {"9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}], "7687/tcp": None}
    assert published_port(ports, "9000/tcp") == 49153
    assert published_port(ports, "7687/tcp") is None
    assert published_port({}, "7474/tcp") is None


def test_no_engine_means_not_offered_and_says_why() -> None:
    assert docker_engine_present({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}) is False
    if docker_engine_present():
        pytest.skip("a Docker engine answers here: the no-engine answer is covered by the table in test_storage_probe")
    found = probe_storage(services=("minio", "neo4j"))
    for service in ("minio", "neo4j"):
        able, why = found[service]
        assert able is False
        assert why.endswith("no Docker engine"), why


async def test_runner_refuses_to_start_without_an_engine(tmp_path: Path) -> None:
    if docker_engine_present():
        pytest.skip("a Docker engine answers here")
    runner = make_single_copy_runner("minio", tmp_path, "127.0.0.1", 0, "n1", b"pool secret", lambda: None)
    assert isinstance(runner, DockerRunner)
    with pytest.raises(RunnerError, match="no Docker engine|Docker SDK is not installed"):
        await runner.start()
    assert runner.port is None
    # The password is the pool's, kept 0600 beside the data, never the image's default.
    assert (tmp_path / "services" / "minio" / "password").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------ live, where an engine answers

needs_engine = pytest.mark.skipif(not docker_engine_present(), reason="no Docker engine answers on this machine (docker.from_env().ping() fails): the container path cannot run here")


def _neo4j(port: int, statement: str) -> dict[str, object]:
    auth = base64.b64encode(f"neo4j:{PASSWORD}".encode()).decode()
    body = json.dumps({"statements": [{"statement": statement}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/db/neo4j/tx/commit", data=body, headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@needs_engine
async def test_neo4j_container_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "services" / "neo4j"
    for attempt in range(2):
        runner = DockerRunner("neo4j", directory, "127.0.0.1", 0, "live-test", PASSWORD)
        await runner.start()
        try:
            assert runner.port is not None and await runner.health() == "healthy"
            if attempt == 0:
                _neo4j(runner.port, "CREATE (:Doc {name: 'kept'})")
            else:
                result = _neo4j(runner.port, "MATCH (d:Doc) RETURN d.name")
                assert result["results"][0]["data"][0]["row"] == ["kept"]  # type: ignore[index]
        finally:
            await runner.stop()


@needs_engine
async def test_minio_container_serves_and_keeps_its_data_dir(tmp_path: Path) -> None:
    directory = tmp_path / "services" / "minio"
    runner = DockerRunner("minio", directory, "127.0.0.1", 0, "live-test", PASSWORD)
    await runner.start()
    try:
        assert runner.port is not None and await runner.health() == "healthy"
    finally:
        await runner.stop()
    assert (directory / "data" / ".minio.sys").is_dir()


def _http_json(url: str, body: object | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@needs_engine
async def test_chromadb_container_keeps_a_collection_across_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "services" / "chromadb"
    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    for attempt in range(2):
        runner = DockerRunner("chromadb", directory, "127.0.0.1", 0, "live-test", PASSWORD)
        await runner.start()
        try:
            assert runner.port is not None and await runner.health() == "healthy"
            url = f"http://127.0.0.1:{runner.port}{base}"
            if attempt == 0:
                made = await asyncio.to_thread(_http_json, url, {"name": "kept"})
                assert made["name"] == "kept"
            assert [c["name"] for c in await asyncio.to_thread(_http_json, url)] == ["kept"]
        finally:
            await runner.stop()
