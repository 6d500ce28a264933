"""The protocol core must stay sans-I/O: this is what lets the simulator run the real code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = {"asyncio", "time", "socket", "select", "selectors", "threading", "uuid", "datetime", "ssl"}
# random.Random(seed) objects are passed in; module-level random functions use hidden global state.
ALLOWED_RANDOM_ATTRS = {"Random"}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["membership", "allocator"])
def test_no_io_clock_or_global_random(package: str) -> None:
    problems = []
    files = _sources(package)
    assert files, f"{package}/ has no sources"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
                if names[0] == "random" and any(a.name not in ALLOWED_RANDOM_ATTRS for a in node.names):
                    problems.append(f"{path.name}:{node.lineno} imports a global random function")
            else:
                names = []
            for name in names:
                if name in FORBIDDEN_MODULES:
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr not in ALLOWED_RANDOM_ATTRS
            ):
                problems.append(f"{path.name}:{node.lineno} uses random.{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hash", "open", "print"):
                problems.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
    assert not problems, "\n".join(problems)
