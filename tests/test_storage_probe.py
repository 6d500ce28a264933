"""can_run_storage: a table of machines; probe_storage on this one agrees with what the runners find."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from services.runners.chroma import chroma_importable
from services.storage_probe import StorageFacts, can_run_storage, probe_storage

NOTHING = StorageFacts(None, None, is_root=False, postgres_user="postgres", postgres_user_exists=False, setpriv=True, docker_engine=False)
BOTH = replace(NOTHING, redis_server="/usr/bin/redis-server", postgres_bin="/usr/lib/postgresql/15/bin")

CASES = [
    ("redis", BOTH, True, "/usr/bin/redis-server"),
    ("redis", NOTHING, False, "redis-server not found (apt-get install redis-server) and no Docker engine"),
    ("redis", replace(NOTHING, docker_engine=True), False, "Docker runner is not written yet"),
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
    assert found["redis"][0] is (shutil.which("redis-server") is not None)
    assert found["chromadb"][0] is chroma_importable()
    assert set(found) == {"chromadb", "redis", "postgres", "minio", "neo4j"}


def test_the_operator_limits_what_a_node_offers() -> None:
    found = probe_storage({"RMAP2P_STORAGE_SERVICES": "redis, postgres"})
    assert found["chromadb"] == (False, "chromadb: not in RMAP2P_STORAGE_SERVICES")
    assert found["redis"][0] is (shutil.which("redis-server") is not None)
