"""``rmap2p status | gaps | leave``: small HTTP clients of a running node.

``leave`` is an operator action, allowed from the node's host or with its
operator token (rmap2p/operator.py). The CLI sends the token of
``--data-dir`` when the node it asks is on this host (its address is one
this machine can bind), so on the node's host it just works whatever the
node binds; the token never goes to another host.
"""

from __future__ import annotations

import argparse
import json
import socket
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmap2p import operator

TIMEOUT = 5.0


class AdminError(Exception):
    pass


def _call(args: argparse.Namespace, path: str, method: str = "GET", as_operator: bool = False) -> Any:
    url = f"http://{args.http}{path}"
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    for name, value in (operator_headers(args) if as_operator else {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise AdminError(f"{url} answered {exc.code}: {exc.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"no node answers at {url} ({reason}); is `rmap2p join` running with --http {args.http}?") from None


def is_this_host(http: str) -> bool:
    """Whether ``HOST:PORT`` (or a URL) names an address of this machine: only this machine can bind it."""
    text = http.strip().split("://", 1)[-1].split("/", 1)[0]
    host = text.rpartition(":")[0].strip("[]") if ":" in text else text
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((sockaddr[0], 0))
                return True
        except OSError:
            continue
    return False


def operator_headers(args: argparse.Namespace) -> dict[str, str]:
    """``X-Rmap2p-Operator`` with the token of ``args.data_dir`` when the node asked is on this host."""
    data_dir = getattr(args, "data_dir", None)
    if not data_dir or not is_this_host(args.http):
        return {}
    token = operator.read_token(Path(data_dir))
    return {operator.HEADER: token} if token else {}


def _run(args: argparse.Namespace, fn: Any) -> int:
    try:
        return fn(args)
    except AdminError as exc:
        print(f"rmap2p {args.verb}: {exc}", file=sys.stderr)
        return 1


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{max(0.0, time.time() - ts):.0f}s"


def reach_text(worker: dict[str, Any], names: dict[str, str]) -> str:
    """"direct", or "via" and the names of the edges relaying it (ids where a name is unknown)."""
    relays = worker.get("relays") or []
    if worker.get("reach", "direct") != "relayed" or not relays:
        return "direct"
    return "via " + ",".join(names.get(r, r) for r in relays)


def _status(args: argparse.Namespace) -> str:
    doc = _call(args, "/api/admin/workers")
    if args.json:
        return json.dumps(doc, indent=2)
    rows = [("ID", "NAME", "STATUS", "INC", "ADDRESS", "REACH", "TYPE", "SERVICES", "LOAD", "REQS", "SEEN")]
    names = {w["worker_id"]: w["name"] or w["worker_id"] for w in doc["workers"]}
    for w in doc["workers"]:
        rows.append(
            (
                w["worker_id"] + ("*" if w.get("self") else ""),
                w["name"],
                w["status"],
                str(w["incarnation"]),
                w["address"],
                reach_text(w, names),
                w["worker_type"],
                ",".join(w["services"]) or "-",
                f"{w['current_load'] * 100:.0f}%",
                str(w["active_requests"]),
                _ago(w["last_seen"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    alive = sum(1 for w in doc["workers"] if w["status"] == "alive")
    lines.append(f"\n{alive} alive of {doc['count']} known (* = the node answering)")
    return "\n".join(lines)


def _gaps(args: argparse.Namespace) -> str:
    doc = _call(args, "/api/admin/gaps")
    if args.json:
        return json.dumps(doc, indent=2)
    lines = [f"{'SERVICE':22} {'TYPE':8} {'PRI':>3} {'WORKERS':>7}  STATUS"]
    for g in doc["gaps"]:
        lines.append(f"{g['service']:22} {g['required_type']:8} {g['priority']:>3} {g['current_workers']:>7}  {g['status']}")
    s = doc["summary"]
    lines.append(f"\n{s['covered']} of {s['total_services']} services covered; {s['needs_attention']} need attention")
    return "\n".join(lines)


CLEAR = "\x1b[H\x1b[2J"
"""Cursor home, erase the screen: what `watch` and `clear` send to a terminal."""


def _print_or_watch(args: argparse.Namespace, render: Callable[[argparse.Namespace], str]) -> int:
    interval = getattr(args, "watch", None)
    if interval is None:
        print(render(args))
        return 0
    if not interval > 0:
        raise AdminError(f"--watch {interval}: must be > 0 seconds")
    # A shell starts background jobs with SIGINT ignored, and Python then installs no handler:
    # the watch must still stop on Ctrl-C (or a SIGINT from whoever started it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Into a pipe or file there is no screen to clear: frames follow each other under their header.
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                body = render(args)
            except AdminError as exc:
                body = f"{exc}\n(retrying)"  # a node restarting is a moment in a watch, not its end
            header = f"rmap2p {args.verb} of {args.http}, every {interval:g}s (Ctrl-C to stop)  {time.strftime('%H:%M:%S')}"
            sys.stdout.write((CLEAR if tty else "") + header + "\n\n" + body + "\n" + ("" if tty else "\n"))
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0


def _leave(args: argparse.Namespace) -> int:
    doc = _call(args, "/api/admin/leave", method="POST", as_operator=True)
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"node {doc.get('node_id')} is leaving the pool")
    return 0


def status(args: argparse.Namespace) -> int:
    return _run(args, lambda a: _print_or_watch(a, _status))


def gaps(args: argparse.Namespace) -> int:
    return _run(args, lambda a: _print_or_watch(a, _gaps))


def leave(args: argparse.Namespace) -> int:
    return _run(args, _leave)
