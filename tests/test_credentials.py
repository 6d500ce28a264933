"""Storage passwords: one per service per pool, kept 0600, never default; runners refuse to run without."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.credentials import derive_password, service_password
from services.runner import RunnerError
from services.runners.postgres import PostgresRunner
from services.runners.redis_server import RedisRunner


def test_derived_per_pool_and_per_service() -> None:
    assert derive_password(b"pool one", "redis") == derive_password(b"pool one", "redis")
    assert derive_password(b"pool one", "redis") != derive_password(b"pool two", "redis")
    assert derive_password(b"pool one", "redis") != derive_password(b"pool one", "postgres")
    assert len(derive_password(b"k", "redis")) == 43
    with pytest.raises(ValueError):
        derive_password(b"", "redis")


def test_kept_in_the_data_dir_0600_and_the_file_wins(tmp_path: Path) -> None:
    first = service_password(tmp_path / "redis", "redis", b"secret")
    path = tmp_path / "redis" / "password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first == derive_password(b"secret", "redis")
    assert service_password(tmp_path / "redis", "redis", b"rotated key") == first
    path.chmod(0o644)
    service_password(tmp_path / "redis", "redis", None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a loosened file is tightened again


def test_without_a_pool_secret_a_random_one(tmp_path: Path) -> None:
    a = service_password(tmp_path / "a", "redis", None)
    b = service_password(tmp_path / "b", "redis", None)
    assert a != b and len(a) >= 32


def test_runners_refuse_an_empty_password(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="without a password"):
        RedisRunner(tmp_path, "127.0.0.1", 0, "n", "")
    with pytest.raises(RunnerError, match="without a password"):
        PostgresRunner(tmp_path, "127.0.0.1", 0, "n", "")


async def test_missing_binaries_fail_the_start_with_the_reason(tmp_path: Path) -> None:
    redis = RedisRunner(tmp_path / "r", "127.0.0.1", 0, "n", "pw", binary=str(tmp_path / "no-redis-server"))
    with pytest.raises(RunnerError, match="no-redis-server"):
        await redis.start()
    postgres = PostgresRunner(tmp_path / "p", "127.0.0.1", 0, "n", "pw", bin_dir=None)
    postgres._bin = None  # as on a machine without PostgreSQL
    with pytest.raises(RunnerError, match="server programs not found"):
        await postgres.start()
