"""``join``'s settings: flag > environment > config file > default, per setting, and the file's errors.

The precedence is table-tested on the resolver; the CLI tests run ``rmap2p join`` as a user does
(``--print-config``, bad files, a real node started from a file).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from procs import NodeProc, free_port, wait_for

from rmap2p import config_file
from rmap2p.cli import build_parser
from rmap2p.config_file import ConfigError, FileConfig, parse_file, resolve


def _file(text: str) -> FileConfig:
    parsed = parse_file(text, "test.toml")
    return FileConfig(Path("test.toml"), parsed.values, parsed.environment)


# (setting key, flag dest value or None, environment, file text, expected value, expected source)
PRECEDENCE: list[tuple[str, Any, dict[str, str], str, Any, str]] = [
    ("bind", "1.1.1.1:1", {"RMAP2P_BIND": "2.2.2.2:2"}, 'bind = "3.3.3.3:3"', "1.1.1.1:1", "--bind"),
    ("bind", None, {"RMAP2P_BIND": "2.2.2.2:2"}, 'bind = "3.3.3.3:3"', "2.2.2.2:2", "RMAP2P_BIND"),
    ("bind", None, {}, 'bind = "3.3.3.3:3"', "3.3.3.3:3", "test.toml"),
    ("bind", None, {}, "", "0.0.0.0:7946", "default"),
    ("bind", None, {"RMAP2P_BIND": ""}, 'bind = "3.3.3.3:3"', "3.3.3.3:3", "test.toml"),  # empty = unset
    ("join", ["f:1"], {"RMAP2P_JOIN": "e:1,e:2"}, 'join = ["c:1"]', ["f:1"], "--join"),
    ("join", None, {"RMAP2P_JOIN": "e:1, e:2"}, 'join = ["c:1"]', ["e:1", "e:2"], "RMAP2P_JOIN"),
    ("join", None, {}, 'join = ["c:1", "c:2,c:3"]', ["c:1", "c:2", "c:3"], "test.toml"),
    ("join", None, {}, 'join = "c:1,c:2"', ["c:1", "c:2"], "test.toml"),
    ("join", None, {}, "", [], "default"),
    ("type", "gpu", {"WORKER_TYPE": "cpu"}, 'type = "edge"', "gpu", "--type"),
    ("type", None, {"WORKER_TYPE": "cpu"}, 'type = "edge"', "cpu", "WORKER_TYPE"),
    ("type", None, {}, 'type = "edge"', "edge", "test.toml"),
    ("type", None, {}, "", "auto", "default"),
    ("name", None, {"WORKER_ID": "env-name"}, 'name = "file-name"', "env-name", "WORKER_ID"),
    ("name", None, {}, "", None, "default"),
    ("edge-window", 5.0, {"RMAP2P_EDGE_WINDOW": "6"}, "edge-window = 7", 5.0, "--edge-window"),
    ("edge-window", None, {"RMAP2P_EDGE_WINDOW": "6"}, "edge-window = 7", 6.0, "RMAP2P_EDGE_WINDOW"),
    ("edge-window", None, {}, "edge-window = 7", 7.0, "test.toml"),
    ("edge-window", None, {}, "", 60.0, "default"),
    ("echo-services", True, {"RMAP2P_ECHO_SERVICES": "0"}, "echo-services = false", True, "--echo-services"),
    ("echo-services", None, {"RMAP2P_ECHO_SERVICES": "0"}, "echo-services = true", False, "RMAP2P_ECHO_SERVICES"),
    ("echo-services", None, {}, "echo-services = true", True, "test.toml"),
    ("echo-services", None, {}, "", False, "default"),
    ("no-mdns", True, {}, "no-mdns = false", True, "--no-mdns"),
    ("no-mdns", None, {}, "no-mdns = true", True, "test.toml"),
    ("service-proxy", ["redis=7000"], {}, "service-proxy = []", ["redis=7000"], "--service-proxy"),
    ("service-proxy", None, {}, "service-proxy = []", [], "test.toml"),
    ("service-proxy", None, {}, "", None, "default"),
    ("data-dir", None, {"RMAP2P_DATA_DIR": "/env/dir"}, 'data-dir = "/file/dir"', "/env/dir", "RMAP2P_DATA_DIR"),
    ("profile", None, {}, 'profile = "local"', "local", "test.toml"),
]


@pytest.mark.parametrize(("key", "flag", "env", "text", "value", "source"), PRECEDENCE)
def test_precedence_flag_env_file_default(key: str, flag: Any, env: dict[str, str], text: str, value: Any, source: str) -> None:
    dest = config_file.BY_KEY[key].dest
    resolved = resolve({dest: flag}, env, _file(text))
    assert (resolved.values[key], resolved.sources[key]) == (value, source)


def test_every_join_flag_has_a_key() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    join = sub.choices["join"]
    flags = {opt[2:] for action in join._actions for opt in action.option_strings if opt.startswith("--")}
    assert flags - {"help", "config", "print-config"} == set(config_file.BY_KEY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown key 'colour'"),
        ('edge-window = "soon"', 'edge-window = "soon": expected a number'),
        ("bind = 7946", "bind = 7946: expected a string"),
        ("no-mdns = 1", "no-mdns = 1: expected true or false"),
        ('type = "fast"', 'type = "fast": expected one of auto, gpu'),
        ("join = [1]", "join = [1]: expected a list of strings"),
        ("[environment]\nRMAP2P_BIND = \"x\"", "write it as the key 'bind'"),
        ("[environment]\nX = [1]", "X = [1]: expected a string"),
        ("bind = ", "not valid TOML"),
    ],
)
def test_file_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_file(text, "test.toml")
    assert message in str(info.value) and str(info.value).startswith("test.toml: ")


def test_env_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="WORKER_TYPE='fast'"):
        resolve({}, {"WORKER_TYPE": "fast"}, _file(""))


def test_environment_table_does_not_override_the_environment() -> None:
    resolved = resolve({}, {"MODEL_NAME": "from-env"}, _file('[environment]\nMODEL_NAME = "f"\nRMAP2P_RATE_LIMIT = 5'))
    environ: dict[str, str] = {"MODEL_NAME": "from-env"}
    config_file.apply_environment(resolved, environ)
    assert environ == {"MODEL_NAME": "from-env", "RMAP2P_RATE_LIMIT": "5"}


# ------------------------------------------------------------ the CLI


def _join(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RMAP2P_", "WORKER_"))}
    return subprocess.run(
        [sys.executable, "-m", "rmap2p", "join", *args], capture_output=True, text=True, timeout=60,
        env={**base, **(env or {})}, cwd=cwd, check=False,
    )


def test_print_config_reads_back_to_the_same_settings(tmp_path: Path) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text('join = ["10.0.0.1:7946"]\nname = "from-file"\nno-mdns = true\n[environment]\nMODEL_NAME = "m"\n')
    first = _join("--config", str(conf), "--bind", "127.0.0.1:7000", "--join", "a:1,b:2", "--print-config",
                  env={"WORKER_TYPE": "cpu", "RMAP2P_DATA_DIR": str(tmp_path / "d")})
    assert first.returncode == 0, first.stderr
    doc = tomllib.loads(first.stdout)
    assert doc["bind"] == "127.0.0.1:7000" and doc["join"] == ["a:1", "b:2"]  # flags
    assert doc["type"] == "cpu" and doc["data-dir"] == str(tmp_path / "d")  # environment
    assert doc["name"] == "from-file" and doc["no-mdns"] is True  # file
    assert doc["profile"] == "lan" and doc["edge-window"] == 60.0  # defaults
    assert doc["environment"] == {"MODEL_NAME": "m"}
    again = tmp_path / "b.toml"
    again.write_text(first.stdout)
    second = _join("--config", str(again), "--print-config")
    assert second.returncode == 0, second.stderr
    assert tomllib.loads(second.stdout) == doc


def test_default_location_and_rmap2p_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "rmap2p.toml").write_text('cluster = "in-data-dir"\n')
    out = _join("--data-dir", str(data), "--print-config")
    assert tomllib.loads(out.stdout)["cluster"] == "in-data-dir", out.stderr
    other = tmp_path / "other.toml"
    other.write_text('cluster = "named"\n')
    out = _join("--print-config", env={"RMAP2P_DATA_DIR": str(data), "RMAP2P_CONFIG": str(other)})
    assert tomllib.loads(out.stdout)["cluster"] == "named", out.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [("colour = \"red\"\n", "unknown key 'colour'"), ("edge-window = \"soon\"\n", "expected a number")],
)
def test_bad_file_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    cp = _join("--config", str(conf), "--no-mdns", "--no-services", "--bind", f"127.0.0.1:{free_port()}")
    assert cp.returncode == 2, cp
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith(f"rmap2p join: {conf}: ") and message in cp.stderr, cp.stderr


def test_missing_named_file_is_exit_2(tmp_path: Path) -> None:
    cp = _join("--config", str(tmp_path / "none.toml"), "--print-config")
    assert cp.returncode == 2 and "does not exist" in cp.stderr, cp


def test_node_runs_from_a_config_file(tmp_path: Path) -> None:
    """A node given only --config gossips and serves where the file says, under the file's name."""
    node = NodeProc("filed", tmp_path)
    conf = tmp_path / "node.toml"
    conf.write_text(
        f'bind = "{node.gossip}"\nhttp = "{node.http}"\ndata-dir = "{node.data_dir}"\nname = "from-toml"\n'
        'no-mdns = true\nno-services = true\nprofile = "local"\n'
    )
    with open(node.log, "ab") as log:
        node.proc = subprocess.Popen([sys.executable, "-m", "rmap2p", "join", "--config", str(conf)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        node.wait_healthy()
        wait_for(lambda: "from-toml" in node.view(), 10, "the node's name from the file")
        assert f"configuration file {conf} read" in node.log.read_text()
    finally:
        node.terminate()


def test_readme_example_is_a_valid_config() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("**Config file.**"):]
    example = section[section.index("```toml\n") + 8: section.index("```", section.index("```toml\n") + 8)]
    parsed = parse_file(example, "README.md")
    assert parsed.values["join"] == ["203.0.113.45:7946", "203.0.113.46:7946"] and parsed.values["no-mdns"] is True
    assert "RMAP2P_RATE_LIMIT" in parsed.environment
