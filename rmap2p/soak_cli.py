"""The options of ``rmap2p soak`` (kept apart so that ``rmap2p --help`` imports nothing heavy)."""

from __future__ import annotations

import argparse
from typing import Any


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1 (e.g. 0.05), not {text}")
    return value


def add_soak_parser(sub: Any) -> argparse.ArgumentParser:
    soak = sub.add_parser(
        "soak",
        help="churn soak: real daemons under client load, one SIGKILLed and restarted every few seconds",
        description=(
            "Start N real daemons of mixed worker types (edge, gpu, cpu, storage). Run as root where network "
            "namespaces work, each daemon runs in a namespace of its own with its own address on a private bridge "
            "and the default ports (7946, HTTP 8080), and the client runs in one more namespace (the root namespace "
            "has no route to them); otherwise, with --loopback or with --storage, they run on loopback (127.0.0.1, "
            "a gossip and an HTTP port each). The figures say which. Wait until the pool has settled, then for "
            "--duration seconds: send a "
            "steady open-loop mix of requests (rag-embeddings, ner-extraction, document-processing) to the "
            "gateway of a random node that is up; every --kill-every seconds SIGKILL a random node and restart "
            "it --down seconds later with the same data dir (same identity); poll every node's "
            "/api/admin/workers once a second. Prints progress on stderr and the figures at the end: requests "
            "sent/answered/failed by status, p50/p99 latency through the gateway, the longest window a service "
            "had no healthy runner, services moved per failure, false deaths (a member turned dead that was not "
            "killed in the last --down + 20 s) and membership flaps (a running member turned from alive to "
            "suspect or dead). Daemons run with --profile local and echo servers in place of the engines by "
            "default (fast to start); --real-services runs the real embeddings and NER engines and needs "
            "RMAP2P_NER_MODEL (a spaCy package or model directory) and the embedding model "
            "(RMAP2P_EMBEDDING_MODEL or the default) in the environment. Storage round trips (Redis only) with --storage. "
            "Every child is killed and the temporary directory removed at the end, also on Ctrl-C."
        ),
    )
    soak.add_argument("--nodes", type=_positive(int), default=8, help="number of daemons (default 8; at least 2)")
    soak.add_argument("--duration", type=_positive(float), default=120.0, metavar="SECONDS",
                      help="seconds of load and churn after the pool has settled (default 120)")
    soak.add_argument("--kill-every", type=_positive(float), default=30.0, metavar="SECONDS",
                      help="seconds between SIGKILLs (default 30)")
    soak.add_argument("--down", type=float, default=10.0, metavar="SECONDS",
                      help="seconds a killed node stays down before its restart (default 10: longer than failure detection)")
    soak.add_argument("--loss", type=_ratio, default=0.0,
                      help="share of packets dropped (default 0). In network namespaces: of every packet a daemon's "
                      "namespace receives (gossip, the client's requests, the peers' forwards); on loopback: of the "
                      "gossip datagrams only, which needs root and iptables (a statistic DROP rule on each daemon's "
                      "gossip port, removed at the end)")
    soak.add_argument("--loopback", action="store_true",
                      help="run on loopback even as root where network namespaces would work")
    soak.add_argument("--rate", type=_positive(float), default=5.0, help="client requests per second (default 5)")
    soak.add_argument("--seed", type=int, default=1, help="seed of the victim sequence (the same seed kills the same nodes in the same order) and of the client's entry nodes (default 1)")
    soak.add_argument("--types", default=None, metavar="T,T,...",
                      help="worker types cycled over the nodes (default edge,gpu,cpu,gpu,gpu,storage,storage,edge)")
    soak.add_argument("--mix", default=None, metavar="SERVICE,...",
                      help="services the client calls in turn: rag-embeddings, ner-extraction, document-processing, "
                      "notes-coa (default the first three; with --real-services rag-embeddings,ner-extraction)")
    soak.add_argument("--real-services", action="store_true",
                      help="real embeddings and NER engines instead of echo servers (see above for the environment)")
    soak.add_argument("--storage", action="store_true",
                      help="storage round trips: the storage nodes (at least two, see --types) run the real redis-server, "
                      "replicated, the others forward a local port to its primary (--service-proxy); twice a second "
                      "the client writes a key (SET, WAIT 1) and reads it back through a random node's proxy, and at "
                      "the end reads every acknowledged write back. The pool gets a keyring (storage passwords derive "
                      "from it) and the client a token. Needs redis-server")
    soak.add_argument("--request-timeout", type=_positive(float), default=None, metavar="SECONDS",
                      help="the client's timeout per request (default 30, 60 with --real-services): longer than the "
                      "gateway's hold (RMAP2P_GATEWAY_HOLD, default 15 s) and the storage proxy's (15 s), as the README advises clients; "
                      "the storage round trips use it too; answers "
                      "slower than 1 s and 10 s are counted apart")
    soak.add_argument("--keep-logs", metavar="DIR", default=None, help="copy the daemons' logs to DIR at the end")
    soak.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return soak
