"""can_run_storage: a table of machines; probe_storage on this one agrees with what the runners find."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from services.runners.chroma import chroma_importable
from services.runners.postgres import find_bin_dir
from services.storage_probe import (
    StorageFacts,
    can_run_storage,
    docker_engine_present,
    probe_storage,
    storage_backend,
)

NOTHING = StorageFacts(None, None, is_root=False, postgres_user="postgres", postgres_user_exists=False, setpriv=True, docker_engine=False)
BOTH = replace(NOTHING, redis_server="/usr/bin/redis-server", postgres_bin="/usr/lib/postgresql/15/bin")

CASES = [
    ("redis", BOTH, True, "/usr/bin/redis-server"),
    ("redis", NOTHING, False, "redis-server not found (apt-get install redis-server) and no Docker engine"),
    ("redis", replace(NOTHING, docker_engine=True), True, "redis: Docker engine (image redis:7.4), stopped with the daemon"),
    ("redis", replace(NOTHING, docker_engine=True, images={"redis": "valkey/valkey:8"}), True, "(image valkey/valkey:8)"),
    ("redis", replace(BOTH, docker_engine=True), True, "redis: /usr/bin/redis-server"),
    ("postgres", replace(NOTHING, docker_engine=True), True, "postgres: Docker engine (image postgres:15)"),
    ("postgres", replace(NOTHING, docker_engine=True, is_root=True), True, "its major must match"),
    ("postgres", replace(BOTH, docker_engine=True), True, "postgres: /usr/lib/postgresql/15/bin"),
    # The programs are there but unusable: the install is what is wrong, not a reason to run a container.
    ("postgres", replace(BOTH, is_root=True, docker_engine=True), False, "user 'postgres' does not exist"),
    ("chromadb", replace(NOTHING, docker_engine=True), True, "chromadb: Docker engine (image chromadb/chroma:1.5.9); no hand-over copy"),
    ("chromadb", replace(NOTHING, chromadb=True, docker_engine=True), True, "chromadb: the chromadb package"),
    ("postgres", BOTH, True, "/usr/lib/postgresql/15/bin"),
    ("postgres", replace(BOTH, is_root=True, postgres_user_exists=True), True, "as user postgres"),
    ("postgres", replace(BOTH, is_root=True), False, "user 'postgres' does not exist"),
    ("postgres", replace(BOTH, is_root=True, postgres_user_exists=True, setpriv=False), False, "setpriv"),
    ("postgres", NOTHING, False, "PostgreSQL's server programs not found"),
    ("chromadb", BOTH, False, "the chromadb package is not installed (pip install 'rmap2p[storage]') and no Docker engine"),
    ("chromadb", replace(NOTHING, chromadb=True), True, "the chromadb package"),
    ("neo4j", replace(BOTH, docker_engine=True), True, "neo4j: Docker engine (image neo4j:5-community)"),
    ("minio", replace(NOTHING, docker_engine=True), True, "minio: Docker engine (image minio/minio)"),
    ("minio", BOTH, False, "minio: no native minio runner (it runs only as a container) and no Docker engine"),
    ("neo4j", NOTHING, False, "no Docker engine"),
]


@pytest.mark.parametrize(("service", "facts", "ok", "says"), CASES)
def test_decision(service: str, facts: StorageFacts, ok: bool, says: str) -> None:
    result, reason = can_run_storage(service, facts)
    assert result is ok
    assert says in reason
    assert reason.startswith(f"{service}: ")


def test_probe_on_this_machine() -> None:
    found = probe_storage()
    engine = docker_engine_present()
    assert found["redis"][0] is (shutil.which("redis-server") is not None or engine)
    assert found["postgres"][1].startswith("postgres: Docker engine") is (find_bin_dir() is None and engine)
    assert found["chromadb"][0] is chroma_importable()
    assert set(found) == {"chromadb", "redis", "postgres", "minio", "neo4j"}


def test_the_operator_limits_what_a_node_offers() -> None:
    found = probe_storage({"RMAP2P_STORAGE_SERVICES": "redis, postgres"})
    assert found["chromadb"] == (False, "chromadb: not in RMAP2P_STORAGE_SERVICES")
    assert found["redis"][0] is (shutil.which("redis-server") is not None or docker_engine_present())


BACKENDS = [
    # (service, native there, engine there, backend)
    ("chromadb", True, True, "native"),
    ("chromadb", False, True, "docker"),
    ("chromadb", False, False, "none"),
    ("redis", True, True, "native"),
    ("redis", False, True, "docker"),
    ("redis", False, False, "none"),
    ("postgres", True, True, "native"),
    ("postgres", False, True, "docker"),
    ("postgres", False, False, "none"),
    ("minio", True, True, "docker"),
    ("neo4j", False, False, "none"),
]


@pytest.mark.parametrize(("service", "native", "engine", "backend"), BACKENDS)
def test_storage_backend_prefers_the_native_runner(service: str, native: bool, engine: bool, backend: str) -> None:
    assert storage_backend(service, native=native, docker_engine=engine) == backend
