"""``rmap2p join``: run a node until Ctrl-C, SIGTERM or ``rmap2p leave``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from allocator.catalog import by_name
from allocator.replicas import REPLICATED
from membership import SwimConfig
from p2p.discovery import format_host_port, parse_host_port
from p2p.relay_server import RelayLimits, parse_port_range
from rmap2p import config_file
from rmap2p.daemon import Node, NodeConfig, StartupError
from rmap2p.edge import EdgeTimings
from rmap2p.http_api import serve
from rmap2p.pool_handle import NodeHandle
from rmap2p.startup_report import report_first_allocation
from services.manager import ServiceManager
from services.stateful_manager import ServiceProxies

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """Turn CLI arguments into a NodeConfig; raises ValueError with a user-facing message."""
    def addr(option: str, text: str, default_port: int | None = None, local: bool = False) -> tuple[str, int]:
        try:
            return parse_host_port(text, default_port=default_port, allow_any_port=local)
        except ValueError as exc:
            raise ValueError(f"{option} {text!r}: {exc}") from None

    bind = addr("--bind", args.bind, local=True)
    # No --http: the node binds the --bind host with port 8080 (rmap2p/addresses.py).
    http = addr("--http", args.http, local=True) if args.http else None
    advertise = addr("--advertise", args.advertise) if args.advertise else None
    joins = tuple(addr("--join", j, default_port=7946) for j in args.join)
    swim = SwimConfig.local() if args.profile == "local" else SwimConfig.lan()
    try:
        relay_limits = RelayLimits(port_range=parse_port_range(args.relay_ports) if args.relay_ports else None)
    except ValueError as exc:
        raise ValueError(f"--relay-ports {args.relay_ports!r}: {exc}") from None
    if not args.edge_window > 0:
        raise ValueError(f"--edge-window {args.edge_window}: must be > 0 seconds")
    if not args.reach_interval >= 0:
        raise ValueError(f"--reach-interval {args.reach_interval}: must be >= 0 seconds (0: never check)")
    return NodeConfig(
        bind=bind,
        http=http,
        advertise=advertise,
        join=joins,
        worker_type=args.type,
        name=args.name or "",
        specialization=args.specialization or "",
        data_dir=Path(args.data_dir).expanduser(),
        key_file=Path(args.key_file).expanduser() if args.key_file else None,
        bootstrap_file=args.bootstrap_file,
        cluster=args.cluster,
        mdns=not args.no_mdns,
        services=not args.no_services,
        ephemeral_service_ports=args.ephemeral_service_ports,
        echo_services=args.echo_services,
        service_proxy=proxy_ports(args.service_proxy),
        swim=swim,
        edge=EdgeTimings(window=args.edge_window, hold=args.edge_window),
        reach_interval=args.reach_interval,
        relay=args.relay,
        relay_offer=not args.no_relay_offer,
        relay_limits=relay_limits,
    )


def proxy_ports(specs: list[str] | None) -> tuple[tuple[str, int], ...]:
    """``--service-proxy [SERVICE=PORT ...]`` as (service, port) pairs; every stateful service at its standard port by default."""
    if specs is None:
        return ()
    ports = {s: by_name(s).port for s in REPLICATED}  # type: ignore[union-attr]
    for spec in specs:
        name, sep, port = spec.partition("=")
        if name not in ports or not sep:
            raise ValueError(f"--service-proxy {spec!r}: expected SERVICE=PORT with SERVICE one of {', '.join(REPLICATED)}")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--service-proxy {spec!r}: port must be 1 to 65535")
        ports[name] = int(port)
    return tuple(sorted(ports.items()))


def http_port_problem(addr: tuple[str, int]) -> OSError | None:
    """Why the HTTP port cannot be listened on (in use, not an address here), or None.

    Checked before the node joins, so a taken port is one clear line and exit 1,
    as for the gossip port, not a node that joins and then falls over.
    """
    host, port = addr
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option aiohttp sets, so a port in TIME_WAIT is not reported as taken;
        # a listening socket still makes bind() fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's servers do
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return exc
    return None


def http_failure(addr: tuple[str, int], exc: OSError) -> str:
    """The one line ``join`` prints when it cannot listen for HTTP, with what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        hint = "another node or program uses it; choose another port with --http HOST:PORT"
    else:
        hint = "choose an address of this machine with --http HOST:PORT"
    return f"cannot listen for HTTP on {format_host_port(*addr)}: {exc.strerror or exc} ({hint})"


async def _serve_http(node: Node) -> None:
    try:
        await serve(node)
    except OSError as exc:
        # Taken between the check and the bind: stop the node the same way, gracefully.
        assert node.config.http is not None
        node.stop(http_failure(node.config.http, exc), error=True)


async def _main(config: NodeConfig) -> int:
    node = Node(config)
    assert node.config.http is not None
    problem = http_port_problem(node.config.http)
    if problem is not None:
        raise StartupError(http_failure(node.config.http, problem))
    node.add_task(lambda: _serve_http(node))
    if config.services:
        manager = ServiceManager(
            NodeHandle(node), ephemeral_ports=config.ephemeral_service_ports, echo=config.echo_services,
            stateful_ephemeral=bool(config.service_proxy),
        )
        node.add_task(manager.run)
        node.before_leave(manager.hand_over)
        node.add_task(lambda: report_first_allocation(node, manager))
    if config.service_proxy:
        node.add_task(ServiceProxies(NodeHandle(node), dict(config.service_proxy)).run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop, f"signal {signal.Signals(sig).name}")
    try:
        await node.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("node %s stopped: %s", node.machine.id if node.machine else "?", node.exit_reason)
    if node.exit_error:
        print(f"rmap2p join: {node.exit_reason}", file=sys.stderr)
        return 1
    return 0


def settle_args(args: argparse.Namespace, environ: Mapping[str, str]) -> config_file.Resolved:
    """Fill every join setting no flag gave from the environment, the config file, then the default."""
    flags = {s.dest: getattr(args, s.dest, None) for s in config_file.SETTINGS}
    resolved = config_file.load(flags, environ, getattr(args, "config", None))
    for s in config_file.SETTINGS:
        setattr(args, s.dest, resolved.values[s.key])
    return resolved


def run(args: argparse.Namespace) -> int:
    try:
        resolved = settle_args(args, os.environ)
        if args.print_config:
            sys.stdout.write(config_file.to_toml(resolved))
            return 0
        config = config_from_args(args)
    except ValueError as exc:
        print(f"rmap2p join: {exc}", file=sys.stderr)
        return 2
    config_file.apply_environment(resolved, os.environ)
    if resolved.file is not None:
        log.info("configuration file %s read (flags and environment variables override it)", resolved.file)
    try:
        return asyncio.run(_main(config))
    except StartupError as exc:
        print(f"rmap2p join: {exc}", file=sys.stderr)
        return 1
