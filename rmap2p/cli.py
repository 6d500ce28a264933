"""Command line: ``python -m rmap2p VERB ...``.

Each verb's work lives in its own module and is imported only when that verb
runs, so ``--help`` stays fast and a verb's heavy imports (aiohttp, zeroconf)
do not slow the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from rmap2p import config_file

DEFAULT_BIND = "0.0.0.0:7946"
DEFAULT_HTTP = "127.0.0.1:8080"
"""Where the status/gaps/leave/keys clients look for a node (a daemon with the default --bind serves there)."""
WORKER_TYPES = config_file.WORKER_TYPES

# verb -> "module:function"; the function takes the parsed args and returns an exit code.
HANDLERS = {
    "join": "rmap2p.cmd_join:run",
    "status": "rmap2p.cmd_admin:status",
    "gaps": "rmap2p.cmd_admin:gaps",
    "leave": "rmap2p.cmd_admin:leave",
    "keygen": "rmap2p.cmd_keygen:run",
    "keys": "rmap2p.cmd_keygen:keys",
    "tokens": "rmap2p.cmd_tokens:run",
    "simulate": "simulations.cli:run",
    "allocate": "rmap2p.cmd_allocate:run",
    "soak": "rmap2p.soak:run",
}


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmap2p",
        description=(
            "A peer-to-peer compute pool. Every machine runs the same daemon: "
            "it finds the pool, keeps a gossiped membership view, decides from "
            "that view which services it runs itself, and forwards requests "
            "to the best node."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output: -v for info, -vv for debug (join logs info already, so -v there is debug)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    join = sub.add_parser(
        "join",
        help="run a node and join (or start) a pool",
        description=(
            "Run a node. It contacts the --join addresses, then the edge nodes in "
            "bootstrap_nodes.txt, then peers found by mDNS; if nobody answers it "
            "starts a pool of one and keeps looking. Ctrl-C leaves gracefully. "
            "Every setting comes from, in this order: the flag, the environment, the config file, the default. "
            "Environment: WORKER_TYPE, WORKER_ID, WORKER_SPECIALIZATION, RMAP2P_BIND, RMAP2P_ADVERTISE, "
            "RMAP2P_HTTP, RMAP2P_JOIN (comma separated), RMAP2P_DATA_DIR, RMAP2P_KEY_FILE, "
            "RMAP2P_BOOTSTRAP_FILE, RMAP2P_CLUSTER, RMAP2P_PROFILE, RMAP2P_EDGE_WINDOW, "
            "RMAP2P_ECHO_SERVICES, RMAP2P_CONFIG (the config file). "
            f"Config file (TOML): --config FILE, else RMAP2P_CONFIG, else <data dir>/{config_file.CONFIG_NAME} "
            "if it exists; each key is a flag's name without -- (bind = \"10.0.0.5:7946\", join = [\"a:7946\"], "
            "no-mdns = true), and an [environment] table sets other variables the node and its services read "
            "(model settings, RMAP2P_RATE_LIMIT) unless already set. --print-config shows the result as such a file. "
            "The dashboard is at / on the HTTP address, Prometheus metrics at /metrics."
        ),
    )
    # Defaults are None here: rmap2p/config_file.py fills what no flag gave from the
    # environment, the file, then the default, and knows which one it used.
    join.add_argument(
        "--config", default=None, metavar="FILE",
        help=f"TOML config file (env RMAP2P_CONFIG; default <data dir>/{config_file.CONFIG_NAME} when it exists)",
    )
    join.add_argument(
        "--print-config", action="store_true",
        help="print the effective configuration as TOML (usable as --config) and exit",
    )
    join.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help=f"gossip address, UDP and TCP on the same port (env RMAP2P_BIND; default {DEFAULT_BIND})",
    )
    join.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="address peers should use to reach this node (env RMAP2P_ADVERTISE; default: --bind, "
        "or a detected one when binding 0.0.0.0)",
    )
    join.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="HTTP API and request gateway (env RMAP2P_HTTP; default: the --bind host, port 8080, so that peers' "
        "gateways reach it; peers are told the advertised host with this port). A loopback address keeps it "
        "local, but then other hosts cannot forward requests or jobs to this node",
    )
    join.add_argument(
        "--join",
        action="extend",
        type=config_file.split_addresses,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="members to join through: repeat the flag or separate addresses by commas (--join a:7946,b:7946); "
        "port 7946 if omitted (env RMAP2P_JOIN, comma separated)",
    )
    join.add_argument(
        "--type",
        choices=WORKER_TYPES,
        help="worker type; auto detects GPU, then edge, then storage, then CPU (env WORKER_TYPE; default auto)",
    )
    join.add_argument(
        "--name",
        help="human-readable worker name shown in status (env WORKER_ID; default: host name)",
    )
    join.add_argument(
        "--specialization",
        help="service or model this node prefers, used by request scoring (env WORKER_SPECIALIZATION)",
    )
    join.add_argument(
        "--data-dir",
        help="where identity, incarnation and service data live (env RMAP2P_DATA_DIR; default ~/.rmap2p)",
    )
    join.add_argument(
        "--key-file",
        help="cluster keyring file made by `rmap2p keygen`; encrypts all gossip (env RMAP2P_KEY_FILE)",
    )
    join.add_argument(
        "--bootstrap-file",
        help="list of edge nodes (env RMAP2P_BOOTSTRAP_FILE; default: bootstrap_nodes.txt in the working "
        "directory or data dir)",
    )
    join.add_argument(
        "--cluster", help="cluster name; nodes of different clusters never merge (env RMAP2P_CLUSTER; default rmap2p)",
    )
    join.add_argument("--no-mdns", action="store_true", default=None, help="do not advertise or browse on mDNS")
    join.add_argument(
        "--no-services", action="store_true", default=None, help="membership and HTTP only: run no service"
    )
    join.add_argument(
        "--echo-services",
        action="store_true",
        default=None,
        help="run every assigned service as an echo server instead of its engine: for testing the overlay "
        "(routing, allocation, hand-over) without models (env RMAP2P_ECHO_SERVICES=1)",
    )
    join.add_argument(
        "--ephemeral-service-ports",
        action="store_true",
        default=None,
        help="let the OS pick each service's port instead of the catalog port (for several nodes on one host); ports are gossiped",
    )
    join.add_argument(
        "--service-proxy", nargs="*", metavar="SERVICE=PORT", default=None,
        help="forward a local port per stateful service (redis 6379, postgres 5432; SERVICE=PORT to change) to its current "
        "primary, switching on failover; this node's own copies then listen on free ports",
    )
    join.add_argument(
        "--edge-window",
        type=float,
        metavar="SECONDS",
        help="--type auto with a public address: evidence window and hold time of edge promotion "
        "and demotion (env RMAP2P_EDGE_WINDOW; default 60; shorter for tests and labs)",
    )
    join.add_argument(
        "--reach-interval",
        type=float,
        metavar="SECONDS",
        help="ask edge nodes this often whether they can reach this node directly (UDP and TCP); "
        "also once at start; 0: never (env RMAP2P_REACH_INTERVAL; default 300)",
    )
    join.add_argument(
        "--relay",
        choices=config_file.RELAY_MODES,
        help="be carried by edge nodes' relays (for a machine behind NAT that nobody can reach): always, never, "
        "or auto = when the reachability check (--reach-interval) finds this node unreachable "
        "(env RMAP2P_RELAY; default auto)",
    )
    join.add_argument(
        "--relay-ports",
        metavar="LO-HI",
        help="edge nodes: port range for the relay listener (LO) and the ports allocated to relayed members "
        "(env RMAP2P_RELAY_PORTS; default: ports the OS picks)",
    )
    join.add_argument(
        "--no-relay-offer", action="store_true", default=None,
        help="as an edge node, do not carry unreachable members (edges offer relaying by default)",
    )
    join.add_argument(
        "--profile",
        choices=("lan", "local"),
        help="protocol timing preset (lan: memberlist LAN defaults; local: faster, for one machine) "
        "(env RMAP2P_PROFILE; default lan)",
    )

    def _http_client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--http",
            default=_env("RMAP2P_HTTP", DEFAULT_HTTP),
            metavar="HOST:PORT",
            help=f"HTTP address of the node to ask (default {DEFAULT_HTTP})",
        )
        p.add_argument("--json", action="store_true", help="print the raw JSON document")
        p.add_argument(
            "--data-dir",
            default=_env("RMAP2P_DATA_DIR", os.path.expanduser("~/.rmap2p")),
            help="the node's data dir, whose operator.token is sent with operator actions "
            "(env RMAP2P_DATA_DIR; default ~/.rmap2p, as for join)",
        )

    def _watch_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
            help="redraw every SECONDS (default 2) until Ctrl-C; in a terminal the screen is cleared "
            "each time, into a pipe the frames follow each other",
        )

    status = sub.add_parser("status", help="print the members a node knows, as a table")
    _http_client_opts(status)
    _watch_opt(status)
    gaps = sub.add_parser("gaps", help="print the services that need more workers")
    _http_client_opts(gaps)
    _watch_opt(gaps)
    leave = sub.add_parser("leave", help="tell a running node to leave the pool gracefully and stop")
    _http_client_opts(leave)

    keygen = sub.add_parser(
        "keygen",
        help="create a cluster key (AES-256-GCM) and print or store it",
        description="Create a new random 256-bit cluster key. With --key-file, add it to that keyring file (created if missing); otherwise print it base64-encoded.",
    )
    keygen.add_argument("--key-file", default=None, help="keyring file to add the key to")
    keygen.add_argument("--primary", action="store_true", help="make the new key the one used to encrypt")
    keys = sub.add_parser(
        "keys",
        help="rotate the keyring of a running node: list, install, use, remove",
        description="Key rotation without downtime: install the new key on every node, then use it everywhere, "
        "then remove the old one. Operator actions: run on the node's host (or with its operator token, read "
        "from --data-dir). Nodes list keys by fingerprint only; use and remove take a key or a fingerprint.",
    )
    keys.add_argument("action", choices=("list", "install", "use", "remove"))
    keys.add_argument("key", nargs="?", help="base64 key (install needs it); for use and remove a fingerprint also works")
    _http_client_opts(keys)

    tokens = sub.add_parser(
        "tokens",
        help="make client tokens for a pool with a keyring",
        description="Print a bearer token that every node of the pool accepts (Authorization: Bearer TOKEN) for "
        "/api/service/... and /api/coordinator/broadcast-job. Made offline from the keyring file; rotating the "
        "keyring's keys (install, use, remove) revokes the tokens made with the removed key.",
    )
    tokens.add_argument("action", choices=("create",))
    tokens.add_argument(
        "--expires", default="30d", metavar="DURATION",
        help="lifetime: a number with s, m, h, d or w (e.g. 12h, 90d), or 'never' (default 30d)",
    )
    tokens.add_argument(
        "--key-file", default=_env("RMAP2P_KEY_FILE"),
        help="the pool's keyring file, as given to join (env RMAP2P_KEY_FILE); its primary key signs the token",
    )
    tokens.add_argument("--json", action="store_true", help="print the token with its id and expiry as JSON")

    simulate = sub.add_parser(
        "simulate",
        help="run the real protocol code on a simulated network",
        add_help=False,
    )
    simulate.add_argument("sim_args", nargs=argparse.REMAINDER)

    allocate = sub.add_parser(
        "allocate",
        help="compute the service assignment for a view read as JSON on stdin",
        description=(
            'Reads {"nodes": [{"node_id", "worker_type", "services": [...], "status"?, '
            '"can_run"?, "specialization"?, "services_status"?}]} on stdin and prints '
            '{"assignments": {node_id: [service, ...]}, "gaps": {...}}. '
            "The gaps count only healthy runners: a listed service is healthy unless "
            'services_status ({service: "healthy"|"starting"|"unhealthy"|"stopping"}) says otherwise. '
            "They are computed as the pool will be once every node runs its assignment: a new or "
            "starting service counts, an unhealthy or stopping one does not. A GPU node whose "
            "can_run names CPU services may be given those the CPU nodes leave uncovered."
        ),
    )
    allocate.add_argument("--indent", type=int, default=2, help="JSON indentation (default 2)")
    from rmap2p.soak_cli import add_soak_parser  # its options live beside the soak

    add_soak_parser(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _split_simulate(argv: list[str]) -> tuple[int, list[str]] | None:
    """``[-v...] simulate ARGS`` → (verbosity, ARGS): the simulator parses its own options."""
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            if arg not in ("-v", "-vv", "-vvv", "--verbose"):
                return None
            continue
        if arg != "simulate":
            return None
        verbosity = sum(a.count("v") if a.startswith("-v") else 1 for a in argv[:i])
        rest = argv[i + 1 :]
        return verbosity, rest[1:] if rest[:1] == ["--"] else rest
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sim = _split_simulate(argv)
    if sim is not None:
        # argparse's REMAINDER would not take options like --nodes after the verb.
        _configure_logging(sim[0])
        from simulations.cli import run as simulate

        return int(simulate(sim[1]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    # A daemon should say what it does by default; one-shot commands stay quiet.
    _configure_logging(args.verbose + (1 if args.verb == "join" else 0))
    module_name, func_name = HANDLERS[args.verb].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe must surface inside this try
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rmap2p status | head -1`: the reader has gone; nothing is wrong with the command.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
