"""``join``'s settings from flags, the environment and a TOML file, in that order of precedence.

Every ``join`` flag has a key of the same name in the file (``--data-dir`` is
``data-dir``, ``--no-mdns`` is ``no-mdns = true``), so an operator reads one
name everywhere. The file is ``--config FILE``, else ``RMAP2P_CONFIG``, else
``<data dir>/rmap2p.toml`` when it exists; the data dir used to find it comes
from the flag, the environment or the default, never from the file itself.

An ``[environment]`` table sets variables the daemon and its services read
(model settings, ``RMAP2P_RATE_LIMIT``, ...) unless the environment already has
them, so the file can stand in for the environment too.

Resolution is pure (no ``os.environ`` read here): the caller passes the
environment, which keeps the precedence table-testable.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ENV = "RMAP2P_CONFIG"
CONFIG_NAME = "rmap2p.toml"
ENV_TABLE = "environment"
DEFAULT_DATA_DIR = "~/.rmap2p"


class ConfigError(ValueError):
    """A setting that cannot be used; the message is the one line the user sees."""


@dataclass(frozen=True)
class Setting:
    key: str
    """The flag without ``--``; the TOML key; ``args`` holds it with ``_`` for ``-``."""
    kind: str
    """str, list (of str), bool, float."""
    default: Any
    env: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")


WORKER_TYPES = ("auto", "gpu", "cpu", "storage", "edge")
PROFILES = ("lan", "local")
RELAY_MODES = ("auto", "always", "never")

SETTINGS: tuple[Setting, ...] = (
    Setting("bind", "str", "0.0.0.0:7946", "RMAP2P_BIND"),
    Setting("advertise", "str", None, "RMAP2P_ADVERTISE"),
    Setting("http", "str", None, "RMAP2P_HTTP"),
    Setting("join", "list", [], "RMAP2P_JOIN"),
    Setting("type", "str", "auto", "WORKER_TYPE", WORKER_TYPES),
    Setting("name", "str", None, "WORKER_ID"),
    Setting("specialization", "str", "", "WORKER_SPECIALIZATION"),
    Setting("data-dir", "str", DEFAULT_DATA_DIR, "RMAP2P_DATA_DIR"),
    Setting("key-file", "str", None, "RMAP2P_KEY_FILE"),
    Setting("bootstrap-file", "str", None, "RMAP2P_BOOTSTRAP_FILE"),
    Setting("cluster", "str", "rmap2p", "RMAP2P_CLUSTER"),
    Setting("no-mdns", "bool", False),
    Setting("no-services", "bool", False),
    Setting("echo-services", "bool", False, "RMAP2P_ECHO_SERVICES"),
    Setting("ephemeral-service-ports", "bool", False),
    # None: no proxy; [] : every stateful service at its standard port (the bare flag).
    Setting("service-proxy", "list", None),
    Setting("edge-window", "float", 60.0, "RMAP2P_EDGE_WINDOW"),
    Setting("reach-interval", "float", 300.0, "RMAP2P_REACH_INTERVAL"),
    Setting("profile", "str", "lan", "RMAP2P_PROFILE", PROFILES),
    Setting("relay", "str", "auto", "RMAP2P_RELAY", RELAY_MODES),
    Setting("relay-ports", "str", None, "RMAP2P_RELAY_PORTS"),
    Setting("no-relay-offer", "bool", False),
)
BY_KEY = {s.key: s for s in SETTINGS}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class FileConfig:
    path: Path | None
    values: dict[str, Any]
    environment: dict[str, str]


@dataclass(frozen=True)
class Resolved:
    values: dict[str, Any]
    """key -> effective value."""
    sources: dict[str, str]
    """key -> where it came from: the flag, the variable's name, the file's path, or "default"."""
    environment: dict[str, str]
    """The file's [environment] table as it takes effect: a variable already set keeps its value."""
    file: Path | None


def split_addresses(text: str) -> list[str]:
    """``a,b`` or ``a, b`` -> ``["a", "b"]``: one rule for --join, RMAP2P_JOIN and the file."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _from_env(s: Setting, text: str) -> Any:
    if s.kind == "list":
        return split_addresses(text)
    if s.kind == "bool":
        return text.strip().lower() not in ("", "0", "false", "no", "off")
    if s.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{s.env}={text!r}: expected a number") from None
    return text


def _check_file_value(s: Setting, value: Any, where: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {s.key} = {json.dumps(value, default=str)}: expected {expected}")

    if s.kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif s.kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif s.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif s.kind == "list":
        if isinstance(value, str) and s.key == "join":
            value = split_addresses(value)
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        else:
            value = [v for item in value for v in (split_addresses(item) if s.key == "join" else [item])]
    if s.choices and value not in s.choices:
        raise ConfigError(f"{where}: {s.key} = {json.dumps(value)}: expected one of {', '.join(s.choices)}")
    return value


def parse_file(text: str, where: str) -> FileConfig:
    """The settings of one TOML document; ``where`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    environment: dict[str, str] = {}
    for key, value in doc.items():
        if key == ENV_TABLE:
            environment = _check_env_table(value, where)
            continue
        s = BY_KEY.get(key) or BY_KEY.get(key.replace("_", "-"))
        if s is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(BY_KEY)}, [{ENV_TABLE}])")
        values[s.key] = _check_file_value(s, value, where)
    return FileConfig(None, values, environment)


def _check_env_table(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {ENV_TABLE} must be a table of NAME = \"value\"")
    by_env = {s.env: s.key for s in SETTINGS if s.env}
    out: dict[str, str] = {}
    for name, v in value.items():
        if not _ENV_NAME.match(name):
            raise ConfigError(f"{where}: [{ENV_TABLE}] {name!r} is not a variable name")
        if name in by_env:
            raise ConfigError(f"{where}: [{ENV_TABLE}] {name}: write it as the key {by_env[name]!r} at the top of the file")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{where}: [{ENV_TABLE}] {name} = {json.dumps(v, default=str)}: expected a string")
        out[name] = v if isinstance(v, str) else str(v)
    return out


def config_path(flag: str | None, env: Mapping[str, str], data_dir: str) -> tuple[Path | None, bool]:
    """The file to read and whether it must exist (named explicitly) or is only looked for."""
    if flag:
        return Path(flag).expanduser(), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser(), True
    return Path(data_dir).expanduser() / CONFIG_NAME, False


def load_file(path: Path | None, required: bool) -> FileConfig:
    if path is None:
        return FileConfig(None, {}, {})
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: does not exist") from None
        return FileConfig(None, {}, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    parsed = parse_file(text, str(path))
    return FileConfig(path, parsed.values, parsed.environment)


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], file: FileConfig) -> Resolved:
    """flag > environment > file > default, per setting. ``flags`` holds dest -> value, None when not given."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        flag = flags.get(s.dest)
        if flag is not None:
            values[s.key], sources[s.key] = flag, f"--{s.key}"
        elif s.env and env.get(s.env, "") != "":
            values[s.key], sources[s.key] = _from_env(s, env[s.env]), s.env
            if s.choices and values[s.key] not in s.choices:
                raise ConfigError(f"{s.env}={env[s.env]!r}: expected one of {', '.join(s.choices)}")
        elif s.key in file.values:
            values[s.key], sources[s.key] = file.values[s.key], str(file.path)
        else:
            values[s.key], sources[s.key] = s.default, "default"
    values["data-dir"] = str(Path(values["data-dir"]).expanduser())
    environment = {name: env.get(name, v) for name, v in file.environment.items()}
    return Resolved(values, sources, environment, file.path)


def load(flags: Mapping[str, Any], env: Mapping[str, str], config_flag: str | None) -> Resolved:
    """Find and read the file, then resolve every setting."""
    data_dir = flags.get("data_dir") or env.get("RMAP2P_DATA_DIR") or DEFAULT_DATA_DIR
    path, required = config_path(config_flag, env, data_dir)
    return resolve(flags, env, load_file(path, required))


# ------------------------------------------------------------ writing it back


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string (same escapes, \uXXXX included).
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(resolved: Resolved) -> str:
    """The effective settings as a TOML file that ``--config`` reads back to the same settings.

    Unset optional settings are written as comments, so the output lists every key.
    """
    lines = ["# rmap2p join: effective configuration (flag > environment > file > default)"]
    if resolved.file is not None:
        lines.append(f"# file read: {resolved.file}")
    for s in SETTINGS:
        value = resolved.values[s.key]
        source = resolved.sources[s.key]
        note = source + (f"; env {s.env}" if s.env and source != s.env else "")
        if value is None:
            lines.append(f"# {s.key} is not set ({note})")
        else:
            lines.append(f"{s.key} = {_toml_value(value)}  # {note}")
    if resolved.environment:
        lines += ["", f"[{ENV_TABLE}]"]
        lines += [f"{name} = {_toml_value(v)}" for name, v in sorted(resolved.environment.items())]
    return "\n".join(lines) + "\n"


def apply_environment(resolved: Resolved, environ: MutableMapping[str, str]) -> None:
    """Give the daemon and its services the file's [environment] (a variable already set wins)."""
    for name, value in resolved.environment.items():
        environ.setdefault(name, value)
