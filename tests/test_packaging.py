"""The packaging files (packaging/): what can be checked on a machine without a Docker engine.

- Both Dockerfiles parse into known instructions, copy every package that
  ``pyproject.toml`` ships and every file they name exists.
- The image's command is run as the image runs it (its ``ENV``, its
  ``ENTRYPOINT`` + ``CMD``, the seeds' variables ``WORKER_TYPE``,
  ``WORKER_ID``, ``WORKER_SPECIALIZATION``, ``RMAP2P_JOIN``), only with
  loopback ports and a tmp data dir instead of ``0.0.0.0`` and ``/data``: the
  node must join with that name, type and specialization, and the image's
  ``HEALTHCHECK`` command must pass against it.
- ``compose.yaml`` passes ``docker compose config`` / ``docker-compose config``
  and the unit passes ``systemd-analyze verify``, where those tools exist.
- Every ``RMAP2P_*``/``WORKER_*`` variable the packaging files name is one the
  CLI reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import ROOT, NodeProc, free_port, wait_for

PACKAGING = ROOT / "packaging"
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
INSTRUCTIONS = {
    "FROM", "ARG", "RUN", "WORKDIR", "COPY", "ADD", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
    "STOPSIGNAL", "ENTRYPOINT", "CMD", "LABEL", "SHELL", "ONBUILD",
}
MODEL_VARS = {"MODEL_NAME", "GPU_MEMORY_UTILIZATION", "MAX_MODEL_LEN", "RMAP2P_VISION_MODEL", "RMAP2P_EMBEDDING_MODEL", "RMAP2P_NER_MODEL"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word, rest.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return out


def env_of(instr: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instr:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def exec_form(instr: list[tuple[str, str]], word: str) -> list[str]:
    (rest,) = [r for w, r in instr if w == word]
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_parses_and_copies_every_shipped_package(name: str) -> None:
    instr = instructions(PACKAGING / name)
    unknown = [w for w, _ in instr if w not in INSTRUCTIONS]
    assert not unknown, f"{name}: unknown instructions {unknown}"
    assert instr[0][0] == "FROM" or all(w == "ARG" for w, _ in instr[: [w for w, _ in instr].index("FROM")])
    copied: set[str] = set()
    for word, rest in instr:
        if word == "COPY":
            args = [a for a in rest.split() if not a.startswith("--")]
            for src in args[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file in the repository"
                copied.add(src.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"{name}: packages not copied into the image: {packages - copied}"
    assert "pyproject.toml" in copied
    assert exec_form(instr, "ENTRYPOINT") == ["rmap2p"]
    assert exec_form(instr, "CMD") == ["join"]
    env = env_of(instr)
    assert env["RMAP2P_HTTP"].startswith("0.0.0.0:") and env["RMAP2P_BIND"].startswith("0.0.0.0:")
    assert env["RMAP2P_DATA_DIR"] == "/data"
    assert [r for w, r in instr if w == "USER"] == ["rmap2p"], "the seeds' rule: no root in containers"


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[NodeProc]:
    node = NodeProc("seed", tmp_path)
    try:
        node.start().wait_healthy()
        yield node
    finally:
        node.kill()


@pytest.mark.slow
def test_the_image_command_with_the_seeds_variables_joins_and_passes_its_healthcheck(seed: NodeProc, tmp_path: Path) -> None:
    instr = instructions(PACKAGING / "Dockerfile")
    image_env = env_of(instr)
    http_port, gossip_port = free_port(), free_port()
    env = {
        **os.environ,
        **image_env,
        # The image's listeners and volume, moved to loopback and a tmp dir for a shared test machine.
        "RMAP2P_BIND": f"127.0.0.1:{gossip_port}",
        "RMAP2P_HTTP": f"127.0.0.1:{http_port}",
        "RMAP2P_DATA_DIR": str(tmp_path / "data"),
        "RMAP2P_PROFILE": "local",
        "WORKER_TYPE": "storage",
        "WORKER_ID": "box-7",
        "WORKER_SPECIALIZATION": "redis",
        "RMAP2P_JOIN": seed.gossip,
    }
    argv = [sys.executable, "-m", *exec_form(instr, "ENTRYPOINT"), *exec_form(instr, "CMD"), "--no-mdns", "--no-services"]
    log = tmp_path / "image.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: seed.view().get("box-7", {}).get("status") == "alive", timeout=20,
            what="the image's node to join the seed under WORKER_ID",
        )
        me = seed.view()["box-7"]
        assert me["worker_type"] == "storage" and me["specialization"] == "redis"
        (check,) = [r for w, r in instr if w == "HEALTHCHECK"]
        cmd = json.loads(check[check.index("CMD") + 3 :].strip())
        assert cmd[0] == "python"
        done = subprocess.run([sys.executable, *cmd[1:]], env=env, check=False, capture_output=True, timeout=10)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        print(log.read_text(errors="replace")[-3000:])
    assert proc.returncode == 0


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid() -> None:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    done = subprocess.run([*cmd, "-f", str(PACKAGING / "compose.yaml"), "config", "-q"], check=False, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    both = subprocess.run([*cmd, "-f", str(PACKAGING / "compose.yaml"), "--profile", "gpu", "config", "--services"], check=False, capture_output=True, timeout=60)
    assert both.returncode == 0, both.stderr.decode()
    assert set(both.stdout.decode().split()) == {"edge", "cpu", "storage", "gpu"}


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    rmap2p = shutil.which("rmap2p") or str(Path(sys.executable).parent / "rmap2p")
    if not Path(rmap2p).exists():
        pytest.skip("no rmap2p console script to stand in for /opt/rmap2p/bin/rmap2p")
    unit = (PACKAGING / "rmap2p.service").read_text()
    assert "ExecStart=/opt/rmap2p/bin/rmap2p join" in unit
    # verify insists that ExecStart exists: point it at this install's script.
    (tmp_path / "rmap2p.service").write_text(unit.replace("/opt/rmap2p/bin/rmap2p", rmap2p))
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "rmap2p.service")], check=False, capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr.decode()


def test_packaging_names_only_variables_the_cli_reads() -> None:
    # join's settings are read in rmap2p/config_file.py (flag > environment > file > default).
    cli = (ROOT / "rmap2p" / "cli.py").read_text() + (ROOT / "rmap2p" / "config_file.py").read_text()
    for name in ("Dockerfile", "Dockerfile.gpu", "compose.yaml", "rmap2p.env", "rmap2p.service"):
        text = (PACKAGING / name).read_text()
        for var in set(re.findall(r"\b((?:RMAP2P|WORKER)_[A-Z_]+)\b", text)):
            if var in MODEL_VARS:
                continue
            assert f'"{var}"' in cli, f"packaging/{name} names {var}, which rmap2p/cli.py and config_file.py do not read"
