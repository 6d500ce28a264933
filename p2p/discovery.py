"""Finding first peers: the bootstrap file and name resolution.

Mechanism. ``bootstrap_nodes.txt`` lists edge nodes a new member contacts
after its ``--join`` addresses (DESIGN "Discovery"), one ``host:port`` per
line: a DNS name, an IPv4 address, or ``[IPv6]:port``. ``#`` starts a
comment (whole line or trailing); blank lines are ignored; duplicates are
dropped keeping the first.

Error policy. :func:`parse_bootstrap` is strict but not lossy: if any line is
bad it raises :class:`BootstrapError` whose ``problems`` lists every bad
line with its number and whose ``addresses`` holds the lines that did
parse. A one-shot tool can report and stop; the daemon, which must keep
running, can log ``str(err)`` and carry on with ``err.addresses``. One typo
in a shared file should neither pass silently nor cut a node off from the
pool.

Resolution is separate (:func:`resolve`) and asynchronous, through
``loop.getaddrinfo``: the transports accept only IP literals, because a name
handed to ``sendto`` would be resolved synchronously and block the loop.
(mDNS discovery lives elsewhere.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Addr = tuple[str, int]

BOOTSTRAP_FILE_NAME = "bootstrap_nodes.txt"
DEFAULT_RESOLVE_TIMEOUT = 5.0
# A bootstrap list names a handful of edge nodes; refuse to read a huge file.
_MAX_BOOTSTRAP_FILE = 1 << 20
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class BootstrapProblem:
    """One unusable line of a bootstrap file."""

    lineno: int
    line: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.reason}: {self.line!r}"


class BootstrapError(ValueError):
    """Bad lines in a bootstrap list (``problems``); ``addresses`` holds the good ones.

    Also raised, with no problems or addresses, when an explicitly named
    bootstrap file does not exist or cannot be read.
    """

    def __init__(
        self,
        message: str,
        problems: Iterable[BootstrapProblem] = (),
        addresses: Iterable[Addr] = (),
    ) -> None:
        self.problems = list(problems)
        self.addresses = list(addresses)
        detail = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(message + detail)


class ResolveError(OSError):
    """A host name did not resolve (or took longer than the timeout)."""


def parse_host_port(text: str, default_port: int | None = None, *, allow_any_port: bool = False) -> Addr:
    """Parse ``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host.

    Returns ``(host, port)`` with IPv6 brackets removed; raises ``ValueError``
    with the reason. Also used for ``--join`` and ``--bind`` values; a local
    bind address may use port 0 (``allow_any_port``: the OS picks one).
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("unclosed '[' in IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        if rest == "" and default_port is not None:
            return (host, default_port)
        if not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        return (host, _parse_port(rest[1:], allow_any_port))
    if text.count(":") > 1:
        raise ValueError("IPv6 addresses need brackets: [addr]:port")
    if ":" in text:
        host, port_text = text.split(":", 1)
        port = _parse_port(port_text, allow_any_port)
    elif default_port is not None:
        host, port = text, default_port
    else:
        raise ValueError("missing ':port'")
    _check_host(host)
    return (host, port)


def format_host_port(host: str, port: int) -> str:
    """The inverse of :func:`parse_host_port`: ``[v6]:port`` for an IPv6 host, ``host:port`` otherwise.

    Every address shown to a user (logs, HTTP documents, known_edges.txt) is
    written this way, so it can be pasted back into ``--join`` or a bootstrap file.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str, allow_zero: bool = False) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if port == 0 and allow_zero:
        return 0
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("missing host")
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    if all(label.isdigit() for label in name.split(".")):
        # "300.1.2.3" or "10.1": digits only, yet not an IPv4 address.
        raise ValueError(f"{host!r} is not a valid IPv4 address")


def parse_bootstrap(text: str, *, default_port: int | None = None) -> list[Addr]:
    """Parse bootstrap-file text into unique ``(host, port)`` pairs, in file order.

    Raises :class:`BootstrapError` if any line is bad (see the module
    docstring for why the good lines travel with the error). A bare host is
    accepted only when ``default_port`` is given.
    """
    addresses: list[Addr] = []
    seen: set[Addr] = set()
    problems: list[BootstrapProblem] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            addr = parse_host_port(line, default_port)
        except ValueError as exc:
            problems.append(BootstrapProblem(lineno, raw.strip(), str(exc)))
            continue
        key = (addr[0].lower(), addr[1])
        if key not in seen:
            seen.add(key)
            addresses.append(addr)
    if problems:
        raise BootstrapError(
            f"{len(problems)} bad line(s) in bootstrap list", problems, addresses
        )
    return addresses


def load_bootstrap(path: str | os.PathLike[str], *, default_port: int | None = None) -> list[Addr]:
    """Read and parse a bootstrap file; :class:`BootstrapError` names the file on any problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(_MAX_BOOTSTRAP_FILE + 1)
    except OSError as exc:
        raise BootstrapError(f"cannot read bootstrap file {p}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_BOOTSTRAP_FILE:
        raise BootstrapError(f"bootstrap file {p} is larger than {_MAX_BOOTSTRAP_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BootstrapError(f"bootstrap file {p} is not UTF-8 text: {exc}") from None
    try:
        return parse_bootstrap(text, default_port=default_port)
    except BootstrapError as exc:
        raise BootstrapError(
            f"{len(exc.problems)} bad line(s) in bootstrap file {p}", exc.problems, exc.addresses
        ) from None


def find_bootstrap_file(
    explicit: str | None,
    data_dir: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The bootstrap file to use, or None when there is none.

    Order: ``explicit`` (which must exist: a missing file the user named is
    an error, :class:`BootstrapError`), else ``./bootstrap_nodes.txt``
    (relative to ``cwd``, default the working directory), else
    ``<data_dir>/bootstrap_nodes.txt``.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BootstrapError(f"bootstrap file {path} does not exist")
        return path
    for candidate in (
        Path(cwd if cwd is not None else Path.cwd()) / BOOTSTRAP_FILE_NAME,
        Path(data_dir).expanduser() / BOOTSTRAP_FILE_NAME,
    ):
        if candidate.is_file():
            return candidate
    return None


async def resolve(
    host: str,
    port: int,
    *,
    timeout: float = DEFAULT_RESOLVE_TIMEOUT,
    family: int = socket.AF_UNSPEC,
) -> list[Addr]:
    """Resolve ``host`` to unique ``(ip, port)`` pairs in resolver order.

    An IP literal comes back as-is without a lookup. Raises
    :class:`ResolveError` when the name does not resolve within ``timeout``.
    """
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return [(host, port)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except TimeoutError:
        raise ResolveError(f"resolving {host!r} took longer than {timeout}s") from None
    except OSError as exc:
        raise ResolveError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    out: list[Addr] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = (str(sockaddr[0]), int(sockaddr[1]))
        if addr not in out:
            out.append(addr)
    return out


async def resolve_many(
    addrs: Iterable[Addr], *, timeout: float = DEFAULT_RESOLVE_TIMEOUT
) -> list[Addr]:
    """Resolve several ``(host, port)`` concurrently; names that fail are logged and skipped."""
    pending = list(addrs)
    results = await asyncio.gather(
        *(resolve(h, p, timeout=timeout) for h, p in pending), return_exceptions=True
    )
    out: list[Addr] = []
    for result in results:
        if isinstance(result, ResolveError):
            log.warning("%s", result)
            continue
        if isinstance(result, BaseException):
            raise result
        for addr in result:
            if addr not in out:
                out.append(addr)
    return out
