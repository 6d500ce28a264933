"""``rmap2p join``: run a node until Ctrl-C, SIGTERM or ``rmap2p leave``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from membership import SwimConfig
from p2p.discovery import parse_host_port
from rmap2p.daemon import Node, NodeConfig, StartupError
from rmap2p.edge import EdgeTimings
from rmap2p.http_api import serve
from rmap2p.pool_handle import NodeHandle
from services.manager import ServiceManager

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """Turn CLI arguments into a NodeConfig; raises ValueError with a user-facing message."""
    def addr(option: str, text: str, default_port: int | None = None, local: bool = False) -> tuple[str, int]:
        try:
            return parse_host_port(text, default_port=default_port, allow_any_port=local)
        except ValueError as exc:
            raise ValueError(f"{option} {text!r}: {exc}") from None

    bind = addr("--bind", args.bind, local=True)
    http = addr("--http", args.http, local=True)
    advertise = addr("--advertise", args.advertise) if args.advertise else None
    joins = tuple(addr("--join", j, default_port=7946) for j in args.join)
    swim = SwimConfig.local() if args.profile == "local" else SwimConfig.lan()
    if not args.edge_window > 0:
        raise ValueError(f"--edge-window {args.edge_window}: must be > 0 seconds")
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
        swim=swim,
        edge=EdgeTimings(window=args.edge_window, hold=args.edge_window),
    )


async def _main(config: NodeConfig) -> int:
    node = Node(config)
    node.add_task(lambda: serve(node))
    if config.services:
        manager = ServiceManager(
            NodeHandle(node), ephemeral_ports=config.ephemeral_service_ports, echo=config.echo_services
        )
        node.add_task(manager.run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop, f"signal {signal.Signals(sig).name}")
    try:
        await node.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("node %s stopped: %s", node.machine.id if node.machine else "?", node.exit_reason)
    return 1 if node.exit_reason.startswith("identity conflict") else 0


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"rmap2p join: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(config))
    except StartupError as exc:
        print(f"rmap2p join: {exc}", file=sys.stderr)
        return 1
