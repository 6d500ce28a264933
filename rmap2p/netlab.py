"""Multi-host test harness built from Linux network namespaces.

Why: gossip, mDNS discovery, partitions and address changes only mean something
between processes that have their own IP addresses on a real (kernel) network.
A ``NetnsLab`` gives each simulated host its own network namespace and address,
joins them with a bridge, and injects faults with iptables *inside* the node
namespaces, so tests can start real ``rmap2p`` daemons and break the network
between them.

Topology and safety (this harness must never emit traffic outside itself):

* Every namespace is named ``rmnt-<pid>-<starttime>-<rand>-<role>``: unique per
  run, and the owner's pid + start time let :func:`sweep_stale` tell an
  abandoned lab (owner gone) from one a parallel run is still using.
* The bridge lives in a dedicated ``hub`` namespace, never in the root
  namespace. Each host namespace is linked to it by a veth pair created
  directly inside the hub/host namespaces, so no interface, address or route
  is ever added to the root namespace and nothing there can reach the lab.
* Hosts get addresses in the harness's own test network ``10.213.7.0/24``
  (``.11`` upwards). Labs are isolated from each other (separate hubs), so
  parallel labs may reuse the same addresses without colliding.
* "Public" hosts (``NetnsLab(n, public=[i, ...])``) get a second address in
  :data:`PUBLIC_SUBNET` ``11.213.7.0/24``, a globally routed range
  (``ipaddress`` ``is_global``), so that ``--type auto`` sees a public address
  and edge promotion runs. That range belongs to someone else out there, which
  is safe only because the lab is a closed box: no namespace has a default
  route (every host has only on-link routes for the lab's own subnets), the
  hub has no address, and the root namespace holds no address or route of
  the lab. :meth:`NetnsLab.isolation_problems` checks exactly that.
* Each host has a route for ``224.0.0.0/4`` on its veth so mDNS
  (224.0.0.251:5353) works; multicast snooping is off on the bridge so
  multicast is flooded to every host.
* IPv6 is disabled on the lab links by default: an IPv6 side channel (e.g.
  mDNS over ff02::fb) would quietly bypass IPv4-only fault rules. ``::1`` on
  loopback stays available. ``NetnsLab(n, ipv6=True)`` enables it and gives
  each host a ULA address in :data:`SUBNET6` ``fd00:213:7::/64`` (``nodad``, so
  it is usable at once); the fault rules are then also loaded with
  ``ip6tables-restore`` for the hosts' IPv6 addresses.
* Proxy variables are removed from the environment of every command run in a
  namespace, so HTTP clients talk to the lab address directly.
* "Home router" (``NetnsLab(n, nat=[i, ...])``): those hosts sit on a second,
  private bridge (its own ``nathub`` namespace) with addresses in
  :data:`NAT_SUBNET` ``192.168.77.0/24``, behind one ``router`` namespace whose
  WAN leg is on the lab bridge at :data:`ROUTER_PUBLIC_IP` (in
  PUBLIC_SUBNET, so the router looks like a home connection's public
  address). The router forwards and MASQUERADEs what the private subnet
  sends out of its WAN leg; nothing comes in unless conntrack matches it to
  a flow a private host opened (no port forwards, no UPnP), and the router
  itself drops unsolicited packets on its WAN leg, like a home router. Linux
  conntrack makes this a port-restricted NAT: a reply must come from the
  very address *and port* the private host sent to. The NAT'd hosts' default
  route points at the router, the one gateway route the lab allows; the
  router itself has only on-link routes, so anything not for the lab dies
  there (ICMP unreachable). Faults (``partition``, ``set_loss``) on a NAT'd
  host act at that host only: other hosts see its packets from the router's
  address, so their rules cannot single it out.

iptables backend: both ``iptables-nft`` and ``iptables-legacy`` work in the
namespaces of the development machine (kernel 6.x, Debian bookworm);
:func:`netns_available` probes ``nft`` first, then ``legacy``, inside a
throwaway namespace and uses the first that works. ``RMAP2P_NETNS_IPTABLES``
(``iptables-nft`` or ``iptables-legacy``) forces one. The harness owns the
whole filter table of each host namespace and rewrites it atomically with
``iptables-restore`` from its recorded fault state. Every fault is a drop in
the INPUT path of the receiving host (never OUTPUT, where a drop turns into
an EPERM from sendto() instead of silent loss).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "NAME_ROOT",
    "NAT_SUBNET",
    "PUBLIC_SUBNET",
    "ROUTER_PUBLIC_IP",
    "SUBNET",
    "SUBNET6",
    "Host",
    "NetnsError",
    "NetnsLab",
    "Router",
    "list_lab_namespaces",
    "netns_available",
    "sweep_stale",
]

log = logging.getLogger(__name__)

#: Every namespace the harness creates starts with this; the sweep only ever
#: touches names that match it.
NAME_ROOT = "rmnt-"
#: The harness's own test network. Never routed from the root namespace.
SUBNET = ipaddress.IPv4Network("10.213.7.0/24")
#: Second subnet on the same bridge for "public" hosts: globally routed, see the module doc.
PUBLIC_SUBNET = ipaddress.IPv4Network("11.213.7.0/24")
#: The private network behind the home router of ``nat=`` labs (see the module doc).
NAT_SUBNET = ipaddress.IPv4Network("192.168.77.0/24")
#: The home router's WAN address, on the lab bridge; everything the NAT'd hosts send leaves from it.
ROUTER_PUBLIC_IP = str(PUBLIC_SUBNET[254])
#: The router's address on the private bridge: the NAT'd hosts' default gateway.
ROUTER_PRIVATE_IP = str(NAT_SUBNET[1])
#: ULA IPv6 addresses of ``ipv6=True`` labs.
SUBNET6 = ipaddress.IPv6Network("fd00:213:7::/64")
_FIRST_HOST_OFFSET = 11
MAX_HOSTS = 200

_IF = "eth0"  # the host's link to the hub, inside each host namespace
_LAN_IF = "eth1"  # the router's leg on the private bridge
_BRIDGE = "br0"  # inside the hub namespace
_CMD_TIMEOUT = 15.0  # for ip/iptables invocations: they take milliseconds
_NAME_RE = re.compile(r"^rmnt-(\d+)-(\d+)-[0-9a-f]+-")
_PROXY_VARS = (
    "http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY", "NO_PROXY",
)
_IPTABLES_CANDIDATES = ("iptables-nft", "iptables-legacy")

Direction = Literal["in", "out", "both"]


class NetnsError(RuntimeError):
    """A namespace operation or a command run inside a namespace failed."""


# --------------------------------------------------------------------------
# low-level helpers


def _run(argv: Sequence[str], *, timeout: float = _CMD_TIMEOUT,
         input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host-side command with a timeout; raise NetnsError with its stderr."""
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    except OSError as e:
        raise NetnsError(f"cannot run {argv[0]}: {e}") from e
    if check and cp.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed (rc={cp.returncode}): "
                         f"{cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def _clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for namespace commands: without proxies (see module doc)."""
    out = dict(os.environ if env is None else env)
    for k in _PROXY_VARS:
        out.pop(k, None)
    return out


def _proc_starttime(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None if it is gone.

    Paired with the pid it identifies a process even across pid reuse.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: parse after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 overall


def list_lab_namespaces() -> list[str]:
    """Names of all existing namespaces that belong to any lab (any run)."""
    if shutil.which("ip") is None:
        return []
    cp = _run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(NAME_ROOT)]


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL whatever still runs inside ``ns`` so the namespace can go away.

    Only called on namespaces created by this harness, whose processes were all
    started by the harness (or by daemons it started).
    """
    cp = _run(["ip", "netns", "pids", ns], check=False)
    for tok in cp.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def _delete_namespaces(names: Iterable[str]) -> list[str]:
    """Kill processes in and delete each namespace; return those still present."""
    names = list(names)
    for ns in names:
        _kill_ns_processes(ns)
        _run(["ip", "netns", "del", ns], check=False)
    present = set(list_lab_namespaces())
    return [n for n in names if n in present]


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose owning process no longer exists.

    Why: a lab whose test run was SIGKILLed (or crashed before its finalizers)
    leaves namespaces behind; they would pile up and keep daemons running.
    Namespaces of a live owner (a parallel test run) are left alone. Returns
    the names removed; a no-op when not root.
    """
    if os.geteuid() != 0:
        return []
    stale = []
    for ns in list_lab_namespaces():
        m = _NAME_RE.match(ns)
        if m is None:
            continue  # not a name this harness makes: not ours to delete
        pid, start = int(m.group(1)), int(m.group(2))
        if _proc_starttime(pid) != start:
            stale.append(ns)
    if not stale:
        return []
    left = _delete_namespaces(stale)
    if left:
        log.warning("sweep could not delete stale namespaces: %s", left)
    return [n for n in stale if n not in left]


# --------------------------------------------------------------------------
# capability probe

_AVAILABLE: tuple[bool, str] | None = None
_IPTABLES: str | None = None


def _probe_iptables(ns: str, binary: str) -> str | None:
    """None if ``binary`` can load the kind of ruleset the harness writes in ``ns``."""
    if shutil.which(binary) is None or shutil.which(binary + "-restore") is None:
        return f"{binary}/{binary}-restore not installed"
    rules = _render_rules([f"-s {SUBNET[1]}/32 -m statistic --mode random "
                           "--probability 0.5 -j DROP"])
    try:
        _run(["ip", "netns", "exec", ns, binary + "-restore", "-w", "10"], input=rules)
        _run(["ip", "netns", "exec", ns, binary, "-w", "10", "-S", "RMNT_IN"])
    except NetnsError as e:
        return str(e)
    return None


def netns_available() -> tuple[bool, str]:
    """Whether this machine can run lab tests, and if not precisely why.

    Checks root, ``ip``, creating a namespace, a veth pair and a bridge in it,
    and loading a statistic-match ruleset with iptables (nft backend first,
    then legacy). The probe runs in a throwaway namespace and is cached.
    """
    global _AVAILABLE, _IPTABLES
    if _AVAILABLE is not None:
        return _AVAILABLE
    _AVAILABLE = _probe()
    return _AVAILABLE


def _probe() -> tuple[bool, str]:
    global _IPTABLES
    if sys.platform != "linux":
        return False, f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return False, "network namespace tests need root (euid is %d)" % os.geteuid()
    if shutil.which("ip") is None:
        return False, "the 'ip' command (iproute2) is not installed"
    forced = os.environ.get("RMAP2P_NETNS_IPTABLES")
    candidates = (forced,) if forced else _IPTABLES_CANDIDATES
    ns = _new_prefix() + "probe"
    try:
        _run(["ip", "netns", "add", ns])
    except NetnsError as e:
        return False, f"'ip netns add' does not work here: {e}"
    try:
        try:
            _run(["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
            _run(["ip", "-n", ns, "link", "add", "pbr", "type", "bridge"])
        except NetnsError as e:
            return False, f"cannot create veth/bridge in a namespace: {e}"
        why = []
        for binary in candidates:
            err = _probe_iptables(ns, binary)
            if err is None:
                _IPTABLES = binary
                return True, f"ok (iptables backend: {binary})"
            why.append(f"{binary}: {err}")
        return False, "no working iptables in a namespace: " + "; ".join(why)
    finally:
        _delete_namespaces([ns])


def _iptables() -> str:
    ok, why = netns_available()
    if not ok or _IPTABLES is None:
        raise NetnsError(f"network namespaces unavailable: {why}")
    return _IPTABLES


def _ip6_for(offset: int) -> str:
    """``fd00:213:7::<offset>`` with the decimal digits read as hex: host .11 is ``::11``, for the eye."""
    return str(SUBNET6[int(str(offset), 16)])


def _ip6tables() -> str:
    """The IPv6 twin of the probed iptables backend (``ip6tables-nft`` for ``iptables-nft``)."""
    binary = _iptables().replace("iptables", "ip6tables", 1)
    if shutil.which(binary) is None or shutil.which(binary + "-restore") is None:
        raise NetnsError(f"IPv6 labs need {binary} and {binary}-restore")
    return binary


# --------------------------------------------------------------------------
# lab


def _new_prefix() -> str:
    pid = os.getpid()
    return f"{NAME_ROOT}{pid}-{_proc_starttime(pid) or 0}-{secrets.token_hex(3)}-"


def _render_rules(rules: Iterable[str]) -> str:
    """An iptables-restore document for a host's incoming lab traffic.

    Only traffic on the lab link is matched (not loopback), so a daemon's
    local API stays reachable from inside its own namespace during faults.
    Every fault is a drop on the *receiving* host: a DROP in OUTPUT would make
    the sender's sendto() fail with EPERM, which real loss never does.
    """
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":RMNT_IN - [0:0]",
        f"-A INPUT -i {_IF} -j RMNT_IN",
    ]
    lines += [f"-A RMNT_IN {rule}" for rule in rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Host:
    """One simulated machine: a network namespace with one address on the lab bridge."""

    def __init__(self, lab: NetnsLab, index: int, ip: str, public_ip: str | None = None,
                 ip6: str | None = None, behind_nat: bool = False) -> None:
        self._lab = lab
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{lab.prefix}{self.name}"
        self.ip = ip
        self.public_ip = public_ip
        """An address in PUBLIC_SUBNET, for hosts made with ``public=``; else None."""
        self.ip6 = ip6
        """A ULA address in SUBNET6 in ``ipv6=True`` labs; else None."""
        self.behind_nat = behind_nat
        """On the private bridge behind the home router (``nat=``): ``ip`` is then in NAT_SUBNET."""
        self._n_procs = 0

    def addresses(self, v6: bool = False) -> list[str]:
        """Every address of this host on the lab link, of one family (fault rules match them all)."""
        if v6:
            return [self.ip6] if self.ip6 else []
        return [self.ip] + ([self.public_ip] if self.public_ip else [])

    def __repr__(self) -> str:
        nat = ", behind_nat" if self.behind_nat else ""
        return f"Host({self.name}, ns={self.ns}, ip={self.ip}, public_ip={self.public_ip}, ip6={self.ip6}{nat})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def log_paths(self, log_name: str) -> tuple[Path, Path]:
        """Where :meth:`popen` writes stdout and stderr for ``log_name``."""
        base = f"{self.name}-{log_name}"
        return self._lab.log_dir / f"{base}.stdout", self._lab.log_dir / f"{base}.stderr"

    def popen(self, argv: Sequence[str], *, log_name: str | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process (e.g. a daemon) inside the namespace.

        stdout/stderr go to files (see :meth:`log_paths`) unless given in
        ``kw``, so a test failure can show what the daemon said. The process
        gets its own session so that :meth:`NetnsLab.destroy` can stop it and
        every child it spawned.
        """
        if self._lab.destroyed or not self._lab.created:
            raise NetnsError(f"{self.name}: lab is not up")
        self._n_procs += 1
        log_name = log_name or f"proc{self._n_procs}"
        out_path, err_path = self.log_paths(log_name)
        opened = []
        if "stdout" not in kw:
            kw["stdout"] = open(out_path, "wb")  # noqa: SIM115 - closed in destroy()
            opened.append(kw["stdout"])
        if "stderr" not in kw:
            kw["stderr"] = open(err_path, "wb")  # noqa: SIM115
            opened.append(kw["stderr"])
        kw["env"] = _clean_env(kw.get("env"))
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        try:
            proc = subprocess.Popen(self.exec_argv(argv), **kw)
        except BaseException:
            for f in opened:
                f.close()
            raise
        self._lab._procs.append((proc, opened))
        return proc

    def run(self, argv: Sequence[str], timeout: float, *, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and capture its output (text)."""
        try:
            return subprocess.run(self.exec_argv(argv), input=input, capture_output=True,
                                  text=True, timeout=timeout, check=check, env=_clean_env())
        except subprocess.TimeoutExpired as e:
            raise NetnsError(f"{self.name}: timed out after {timeout}s: {' '.join(argv)}") from e

    def python(self, code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet inside the namespace with this interpreter."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout)

    def http_get_json(self, url: str, timeout: float = 5.0) -> Any:
        """GET ``url`` from inside this namespace and return the parsed JSON body.

        The request must originate in the namespace (the root namespace has no
        route to the lab). Raises NetnsError on connection errors, non-2xx
        status or timeout; ``json.JSONDecodeError`` if the body is not JSON.
        """
        cp = self.python(_HTTP_GET, url, str(timeout), timeout=timeout + 10.0)
        if cp.returncode != 0:
            raise NetnsError(f"{self.name}: GET {url} failed: {cp.stderr.strip()[-2000:]}")
        return json.loads(cp.stdout)

    def ping(self, ip: str, count: int = 1, timeout: float = 2.0) -> int:
        """Send ``count`` ICMP echo requests to ``ip``; return how many got a reply.

        Done with a raw socket in Python because ``ping`` is not always installed.
        """
        cp = self.python(_PING, ip, str(count), str(timeout),
                         timeout=timeout * count + 10.0)
        if cp.returncode != 0:
            raise NetnsError(f"{self.name}: ping {ip}: {cp.stderr.strip()[-2000:]}")
        return int(cp.stdout.strip())


class Router:
    """The home router of a ``nat=`` lab: WAN leg on the lab bridge, LAN leg on the private one."""

    def __init__(self, lab: NetnsLab) -> None:
        self.ns = f"{lab.prefix}router"
        self.lan_hub = f"{lab.prefix}nathub"
        self.public_ip = ROUTER_PUBLIC_IP
        self.private_ip = ROUTER_PRIVATE_IP

    def __repr__(self) -> str:
        return f"Router(ns={self.ns}, public_ip={self.public_ip}, private_ip={self.private_ip})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], timeout: float = _CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a short command in the router's namespace (e.g. ``iptables -t nat -S``, for debugging)."""
        return _run(self.exec_argv(argv), timeout=timeout, check=False)


def _router_rules() -> tuple[str, str]:
    """The router's filter and nat tables: forward and masquerade outbound, only conntrack's replies in.

    WAN is ``eth0`` (lab bridge), LAN ``eth1`` (private bridge). INPUT on the
    WAN leg drops what is not a reply, as home routers do, so a probe of the
    router's address times out instead of being refused.
    """
    filt = "\n".join([
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        f"-A INPUT -i {_IF} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A INPUT -i {_IF} -p icmp --icmp-type echo-request -j ACCEPT",
        f"-A INPUT -i {_IF} -j DROP",
        f"-A FORWARD -i {_LAN_IF} -o {_IF} -s {NAT_SUBNET} -j ACCEPT",
        f"-A FORWARD -i {_IF} -o {_LAN_IF} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "COMMIT",
    ]) + "\n"
    nat = "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        f"-A POSTROUTING -s {NAT_SUBNET} -o {_IF} -j MASQUERADE",
        "COMMIT",
    ]) + "\n"
    return filt, nat


_HTTP_GET = r"""
import sys, urllib.request
url, timeout = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=timeout) as r:
        sys.stdout.write(r.read().decode())
except Exception as e:
    sys.stderr.write(f"{type(e).__name__}: {e}")
    sys.exit(2)
"""

_PING = r"""
import os, socket, struct, sys, time
ip, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, got = os.getpid() & 0xFFFF, 0
for seq in range(count):
    body = b"rmnt-ping-payload"
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body, (ip, 0))
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            pkt, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        ihl = (pkt[0] & 0x0F) * 4
        t, _c, _k, i, q = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
        if t == 0 and i == ident and q == seq and addr[0] == ip:
            got += 1
            break
print(got)
"""


_LIVE_LABS: weakref.WeakSet[NetnsLab] = weakref.WeakSet()


@atexit.register
def _destroy_live_labs() -> None:
    """Last-chance cleanup when the interpreter exits with labs still up."""
    for lab in list(_LIVE_LABS):
        try:
            lab.destroy()
        except Exception:  # noqa: BLE001 - best effort at exit; sweep handles the rest
            log.exception("atexit: could not destroy %s", lab.prefix)


class NetnsLab:
    """``n_hosts`` namespaces on one bridge, with fault injection.

    Use as a context manager or via the ``netns_lab`` pytest fixture, which
    guarantee :meth:`destroy` runs. Faults are recorded as state (loss per
    host and direction, list of partitions) and each host's filter table is
    re-rendered from that state, so :meth:`set_ip` keeps partitions in force
    for the moved host and :meth:`heal` leaves no rule behind.
    """

    def __init__(self, n_hosts: int, prefix: str | None = None,
                 log_dir: str | os.PathLike[str] | None = None, *,
                 public: Iterable[int] = (), ipv6: bool = False, nat: Iterable[int] = ()) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be in 1..{MAX_HOSTS}, got {n_hosts}")
        if prefix is not None and not prefix.startswith(NAME_ROOT):
            raise ValueError(f"prefix must start with {NAME_ROOT!r} so the sweep can find it")
        public = set(public)
        if not public <= set(range(n_hosts)):
            raise ValueError(f"public host indexes must be in 0..{n_hosts - 1}, got {sorted(public)}")
        nat = set(nat)
        if not nat <= set(range(n_hosts)):
            raise ValueError(f"nat host indexes must be in 0..{n_hosts - 1}, got {sorted(nat)}")
        if nat & public:
            raise ValueError(f"a host cannot be both public and behind NAT: {sorted(nat & public)}")
        if nat and ipv6:
            raise ValueError("the home router is IPv4 only (NAT66 would be a different lab)")
        self.prefix = prefix or _new_prefix()
        self.hub = f"{self.prefix}hub"
        self.ipv6 = ipv6
        self.hosts = [
            Host(self, i, str((NAT_SUBNET if i in nat else SUBNET)[_FIRST_HOST_OFFSET + i]),
                 public_ip=str(PUBLIC_SUBNET[_FIRST_HOST_OFFSET + i]) if i in public else None,
                 ip6=_ip6_for(_FIRST_HOST_OFFSET + i) if ipv6 else None, behind_nat=i in nat)
            for i in range(n_hosts)
        ]
        self.router: Router | None = Router(self) if nat else None
        """The home router in front of the ``nat=`` hosts; None in a lab without them."""
        self.log_dir = Path(log_dir) if log_dir is not None else Path(
            tempfile.mkdtemp(prefix=f"{self.prefix}logs-"))
        self.created = False
        self.destroyed = False
        self._procs: list[tuple[subprocess.Popen[bytes], list[Any]]] = []
        self._loss: dict[str, dict[str, float]] = {}  # host name -> {"in": p, "out": p}
        self._partitions: list[tuple[frozenset[str], frozenset[str], bool]] = []
        self._port_drops: dict[str, set[tuple[str, int | None]]] = {}  # host name -> {(proto, dport)}

    # ---- lifecycle

    def __enter__(self) -> NetnsLab:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab creates (hubs last, so hosts go first)."""
        router = [self.router.ns, self.router.lan_hub] if self.router is not None else []
        return [h.ns for h in self.hosts] + router + [self.hub]

    def host(self, name: str) -> Host:
        """The host called ``name`` (``"h0"``...)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def create(self) -> NetnsLab:
        """Build the namespaces, bridge and links. Idempotent; cleans up on failure."""
        if self.created:
            return self
        if self.destroyed:
            raise NetnsError("a destroyed lab cannot be re-created; make a new one")
        _iptables()  # fail early with the probe's reason
        if self.ipv6:
            _ip6tables()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.created = True  # so destroy() cleans a half-built lab
        _LIVE_LABS.add(self)
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        hub = self.hub
        _run(["ip", "netns", "add", hub])
        self._sysctl(hub, "net.ipv6.conf.default.disable_ipv6", "1")
        _run(["ip", "-n", hub, "link", "add", _BRIDGE, "type", "bridge",
              "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"])
        _run(["ip", "-n", hub, "link", "set", _BRIDGE, "up"])
        if self.router is not None:
            self._build_router()
        for h in self.hosts:
            _run(["ip", "netns", "add", h.ns])
            self._sysctl(h.ns, "net.ipv6.conf.default.disable_ipv6", "1")
            port = f"v{h.index}"
            # Both ends are created inside lab namespaces: nothing in the root one.
            # A NAT'd host's link goes to the private bridge instead of the lab's.
            link_hub = self.router.lan_hub if h.behind_nat and self.router is not None else hub
            _run(["ip", "-n", link_hub, "link", "add", port, "type", "veth",
                  "peer", "name", _IF, "netns", h.ns])
            self._sysctl(h.ns, f"net.ipv6.conf.{_IF}.disable_ipv6", "0" if self.ipv6 else "1")
            _run(["ip", "-n", link_hub, "link", "set", port, "master", _BRIDGE])
            _run(["ip", "-n", link_hub, "link", "set", port, "up"])
            _run(["ip", "-n", h.ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", h.ns, "addr", "add", f"{h.ip}/{SUBNET.prefixlen}", "dev", _IF])
            _run(["ip", "-n", h.ns, "link", "set", _IF, "up"])
            _run(["ip", "-n", h.ns, "route", "replace", "224.0.0.0/4", "dev", _IF])
            if h.behind_nat:
                # The one gateway route of the lab: to the home router, which routes only inside it.
                _run(["ip", "-n", h.ns, "route", "replace", "default", "via", ROUTER_PRIVATE_IP, "dev", _IF])
            elif h.public_ip is not None:
                _run(["ip", "-n", h.ns, "addr", "add", f"{h.public_ip}/{PUBLIC_SUBNET.prefixlen}", "dev", _IF])
            elif any(x.public_ip for x in self.hosts) or self.router is not None:
                # On-link like the public hosts' own connected route: everyone reaches them directly.
                _run(["ip", "-n", h.ns, "route", "replace", str(PUBLIC_SUBNET), "dev", _IF])
            if h.ip6 is not None:
                # nodad: usable at once instead of after duplicate address detection (~1 s).
                _run(["ip", "-n", h.ns, "-6", "addr", "add", f"{h.ip6}/{SUBNET6.prefixlen}",
                      "dev", _IF, "nodad"])
            self._apply_rules(h)
        if any(h.public_ip for h in self.hosts) or self.ipv6 or self.router is not None:
            problems = self.isolation_problems()
            if problems:
                raise NetnsError("lab is not isolated: " + "; ".join(problems))

    def _build_router(self) -> None:
        """The home router: private bridge in its own hub, WAN leg on the lab bridge, NAT rules."""
        assert self.router is not None
        r = self.router
        _run(["ip", "netns", "add", r.lan_hub])
        self._sysctl(r.lan_hub, "net.ipv6.conf.default.disable_ipv6", "1")
        _run(["ip", "-n", r.lan_hub, "link", "add", _BRIDGE, "type", "bridge",
              "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"])
        _run(["ip", "-n", r.lan_hub, "link", "set", _BRIDGE, "up"])
        _run(["ip", "netns", "add", r.ns])
        self._sysctl(r.ns, "net.ipv6.conf.default.disable_ipv6", "1")
        for hub_ns, port, leg in ((self.hub, "vrouter", _IF), (r.lan_hub, "vrouter", _LAN_IF)):
            _run(["ip", "-n", hub_ns, "link", "add", port, "type", "veth", "peer", "name", leg, "netns", r.ns])
            _run(["ip", "-n", hub_ns, "link", "set", port, "master", _BRIDGE])
            _run(["ip", "-n", hub_ns, "link", "set", port, "up"])
            self._sysctl(r.ns, f"net.ipv6.conf.{leg}.disable_ipv6", "1")
        _run(["ip", "-n", r.ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", r.ns, "addr", "add", f"{r.public_ip}/{PUBLIC_SUBNET.prefixlen}", "dev", _IF])
        _run(["ip", "-n", r.ns, "addr", "add", f"{r.private_ip}/{NAT_SUBNET.prefixlen}", "dev", _LAN_IF])
        for leg in (_IF, _LAN_IF):
            _run(["ip", "-n", r.ns, "link", "set", leg, "up"])
        # On-link, like every lab route: the lab's own subnet sits on the same bridge as the WAN leg.
        _run(["ip", "-n", r.ns, "route", "replace", str(SUBNET), "dev", _IF, "src", r.public_ip])
        self._sysctl(r.ns, "net.ipv4.ip_forward", "1")
        filt, nat = _router_rules()
        _run(r.exec_argv([_iptables() + "-restore", "-w", "10"]), input=filt + nat)

    def isolation_problems(self) -> list[str]:
        """Ways traffic for the lab's addresses could leave it; empty when the lab is a closed box.

        Checks that no host or hub namespace has a default route (IPv4 or IPv6)
        or any route through a gateway, and that the root namespace holds no
        address or route inside the lab's subnets.
        """
        problems = []
        lab_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [SUBNET, PUBLIC_SUBNET, SUBNET6]
        if self.router is not None:
            lab_nets.append(NAT_SUBNET)
        nat_hosts = {h.ns for h in self.hosts if h.behind_nat}
        # The only gateway route allowed: a NAT'd host's default route to the home router,
        # which itself has none (so the router is checked like every other namespace).
        allowed = f"default via {ROUTER_PRIVATE_IP} dev {_IF}"
        for ns in self.namespaces:
            for fam in ("-4", "-6"):
                routes = _run(["ip", "-n", ns, fam, "-o", "route", "show", "table", "all"]).stdout
                for line in routes.splitlines():
                    words = line.split()
                    if ns in nat_hosts and fam == "-4" and " ".join(words[:5]) == allowed:
                        continue
                    if words and words[0] == "default" or " via " in line:
                        problems.append(f"{ns} has a route out: {line.strip()}")
        if self.router is not None:
            problems += self._router_problems()
        for fam in ("-4", "-6"):
            for what in ("addr", "route"):
                for line in _run(["ip", fam, "-o", what, "show"]).stdout.splitlines():
                    for word in line.split():
                        try:
                            net = ipaddress.ip_network(word.split("/")[0] if what == "addr" else word,
                                                       strict=False)
                        except ValueError:
                            continue
                        if any(net.version == n.version and net.overlaps(n) for n in lab_nets):
                            problems.append(f"the root namespace has a lab {what}: {line.strip()}")
        return problems

    def _router_problems(self) -> list[str]:
        """Ways the home router could let traffic in that no private host asked for."""
        assert self.router is not None
        r = self.router
        problems = []
        rules = _run(r.exec_argv([_iptables(), "-w", "10", "-S"])).stdout.splitlines()
        if "-P FORWARD DROP" not in rules:
            problems.append(f"{r.ns} forwards by default: {[x for x in rules if x.startswith('-P FORWARD')]}")
        for rule in rules:
            if rule.startswith("-A FORWARD") and f"-i {_IF}" in rule and "ESTABLISHED" not in rule:
                problems.append(f"{r.ns} forwards unsolicited WAN traffic: {rule}")
        nat = _run(r.exec_argv([_iptables(), "-w", "10", "-t", "nat", "-S"])).stdout
        if "DNAT" in nat or "REDIRECT" in nat:
            problems.append(f"{r.ns} has a port forward: {nat.strip()}")
        return problems

    @staticmethod
    def _sysctl(ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        # Written from inside the namespace: /proc/sys/net is per namespace.
        _run(["ip", "netns", "exec", ns, sys.executable, "-c",
              "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", path, value])

    def destroy(self, grace: float = 3.0) -> None:
        """Stop every process started in the lab and delete every namespace.

        Idempotent and safe on a half-built lab. Processes get SIGTERM and
        ``grace`` seconds before SIGKILL; anything else still inside a lab
        namespace is killed. Raises NetnsError if a namespace survives.
        """
        if self.destroyed:
            return
        self.destroyed = True
        _LIVE_LABS.discard(self)
        if not self.created:
            return
        self._stop_procs(grace)
        left = _delete_namespaces(self.namespaces)
        if left:
            raise NetnsError(f"could not delete namespaces: {left}")

    def _stop_procs(self, grace: float) -> None:
        for proc, _files in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace
        for proc, files in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    log.warning("process %d did not die after SIGKILL", proc.pid)
            for f in files:
                f.close()

    # ---- faults

    def set_loss(self, host: Host, probability: float, direction: Direction = "both") -> None:
        """Drop a random ``probability`` of ``host``'s packets on the lab link.

        ``"in"`` drops what it receives, ``"out"`` what it sends, ``"both"``
        each independently. Replaces the host's previous loss for those
        directions; ``probability`` 0 removes it. Outgoing loss is applied at
        each receiver (see :func:`_render_rules`), so a multicast datagram is
        lost independently per receiver, and the sender never sees an error.
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be in/out/both, got {direction!r}")
        self._check_host(host)
        loss = self._loss.setdefault(host.name, {})
        for d in (("in", "out") if direction == "both" else (direction,)):
            loss[d] = probability
        self._apply_all()

    def partition(self, group_a: Iterable[Host], group_b: Iterable[Host],
                  symmetric: bool = True) -> None:
        """Cut traffic between two groups of hosts (unicast and multicast).

        With ``symmetric=False`` only traffic *from* ``group_a`` *to*
        ``group_b`` is dropped (a one-way partition). Partitions add up until
        :meth:`heal`.
        """
        a, b = list(group_a), list(group_b)
        for h in a + b:
            self._check_host(h)
        names_a, names_b = frozenset(h.name for h in a), frozenset(h.name for h in b)
        if names_a & names_b:
            raise ValueError(f"groups overlap: {sorted(names_a & names_b)}")
        self._partitions.append((names_a, names_b, symmetric))
        self._apply_all()

    def drop_incoming(self, host: Host, proto: Literal["udp", "tcp"], dport: int | None = None) -> None:
        """Drop every ``proto`` packet (to ``dport``, if given) that reaches ``host`` over the lab link.

        Why: a fault on one protocol only, e.g. a node the others can no longer
        ping over UDP while TCP still works. Adds up until :meth:`heal`.
        """
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be udp or tcp, got {proto!r}")
        self._check_host(host)
        self._port_drops.setdefault(host.name, set()).add((proto, dport))
        self._apply_rules(host)

    def heal(self) -> None:
        """Remove every loss, partition and protocol rule the harness added, on every host."""
        self._loss.clear()
        self._partitions.clear()
        self._port_drops.clear()
        self._apply_all()

    def set_ip(self, host: Host, new_ip: str) -> None:
        """Move ``host`` to ``new_ip`` (same namespace, processes keep running).

        Why: "a node restarted with the same identity on a different IP". The
        address must be in :data:`SUBNET` and unused. Neighbour caches are
        flushed everywhere and faults re-rendered for the new address.
        """
        self._check_host(host)
        if host.behind_nat:
            raise ValueError(f"{host.name} is behind the home router; set_ip moves lab-bridge hosts only")
        addr = ipaddress.IPv4Address(new_ip)
        if addr not in SUBNET or addr in (SUBNET.network_address, SUBNET.broadcast_address):
            raise ValueError(f"{new_ip} is not a host address of {SUBNET}")
        if any(h.ip == new_ip for h in self.hosts if h is not host):
            raise ValueError(f"{new_ip} is already used by another host")
        _run(["ip", "-n", host.ns, "addr", "flush", "dev", _IF])
        _run(["ip", "-n", host.ns, "addr", "add", f"{new_ip}/{SUBNET.prefixlen}", "dev", _IF])
        _run(["ip", "-n", host.ns, "route", "replace", "224.0.0.0/4", "dev", _IF])
        host.ip = new_ip
        for h in self.hosts:
            _run(["ip", "-n", h.ns, "neigh", "flush", "dev", _IF], check=False)
        self._apply_all()

    def rules(self, host: Host) -> str:
        """The iptables rules currently loaded in ``host`` (``iptables -S``), for debugging."""
        return _run(host.exec_argv([_iptables(), "-w", "10", "-S"])).stdout

    def _check_host(self, host: Host) -> None:
        if host._lab is not self:
            raise ValueError(f"{host!r} does not belong to this lab")
        if not self.created or self.destroyed:
            raise NetnsError("lab is not up")

    def _rules_for(self, host: Host, v6: bool = False) -> list[str]:
        """``host``'s incoming-drop rules for one address family, rendered from the fault state."""
        by_name = {h.name: h for h in self.hosts}
        bits = 128 if v6 else 32
        rules: list[str] = []
        for proto, dport in sorted(self._port_drops.get(host.name, ()), key=str):
            rules.append(f"-p {proto}" + (f" --dport {dport}" if dport is not None else "") + " -j DROP")
        for names_a, names_b, symmetric in self._partitions:
            pairs = [(names_a, names_b)] + ([(names_b, names_a)] if symmetric else [])
            for src, dst in pairs:
                if host.name in dst:
                    rules += [f"-s {ip}/{bits} -j DROP" for n in sorted(src) for ip in by_name[n].addresses(v6)]
        sources: list[tuple[str, float]] = [("", self._loss.get(host.name, {}).get("in", 0.0))]
        sources += [(f"-s {ip}/{bits} ", self._loss.get(h.name, {}).get("out", 0.0))
                    for h in self.hosts if h is not host for ip in h.addresses(v6)]
        for match, p in sources:
            if p >= 1.0:
                rules.append(f"{match}-j DROP")
            elif p > 0.0:
                rules.append(f"{match}-m statistic --mode random --probability {p:.6f} -j DROP")
        return rules

    def _apply_all(self) -> None:
        for h in self.hosts:
            self._apply_rules(h)

    def _apply_rules(self, host: Host) -> None:
        _run(host.exec_argv([_iptables() + "-restore", "-w", "10"]),
             input=_render_rules(self._rules_for(host)))
        if self.ipv6:
            _run(host.exec_argv([_ip6tables() + "-restore", "-w", "10"]),
                 input=_render_rules(self._rules_for(host, v6=True)))
