"""Help texts stay true: ``join --help`` names every environment variable the CLI reads, and no
help shows a literal ``%%`` (argparse un-doubles ``%`` in argument help, not in epilogs)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from procs import ROOT

from rmap2p import config_file
from rmap2p.cli import build_parser
from simulations.cli import build_parser as build_simulate_parser


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    return out.getvalue()


def test_join_help_names_every_environment_variable_the_cli_reads() -> None:
    source = (ROOT / "rmap2p" / "cli.py").read_text()
    read = set(re.findall(r'_env\("([A-Z0-9_]+)"', source))
    # join's own settings are read by rmap2p/config_file.py, after the flags.
    read |= {s.env for s in config_file.SETTINGS if s.env} | {config_file.CONFIG_ENV}
    assert {"WORKER_TYPE", "WORKER_ID", "RMAP2P_JOIN"} <= read
    text = " ".join(_help(["join", "--help"]).split())
    missing = sorted(v for v in read if v not in text)
    assert not missing, f"join --help does not mention {missing}"


def test_no_literal_double_percent_in_help() -> None:
    assert "%%" not in build_simulate_parser().format_help()
    for argv in (["--help"], ["join", "--help"], ["status", "--help"]):
        assert "%%" not in _help(argv), argv
