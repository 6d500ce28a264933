"""Tests of the network-namespace harness itself (tests/netns.py).

Why: every multi-host test trusts that the lab gives each host its own
address, that multicast (mDNS) crosses the bridge, that injected faults do
exactly what they claim and disappear on heal, and that nothing is left
behind. Each of those is checked here with real packets between namespaces.
"""

from __future__ import annotations

import ipaddress
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import (
    NAT_SUBNET,
    PUBLIC_SUBNET,
    ROUTER_PUBLIC_IP,
    SUBNET,
    SUBNET6,
    Host,
    NetnsError,
    NetnsLab,
    _proc_starttime,
    list_lab_namespaces,
    sweep_stale,
)

pytestmark = pytest.mark.netns

PORT = 47000

# Echo server: answers every datagram to its sender; ends by itself after 60 s.
ECHO_SERVER = r"""
import socket, sys, time
bind = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
s.bind((bind, int(sys.argv[1])))
print("ready", flush=True)
deadline = time.monotonic() + 60
for _ in range(1_000_000):
    left = deadline - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(data, addr)
"""

# Client "probe": send one datagram every 0.1 s until one is echoed or the
# deadline passes; prints 1 or 0.
ECHO_PROBE = r"""
import socket, sys, time
ip, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
deadline, got = time.monotonic() + limit, 0
for i in range(10_000):
    if time.monotonic() >= deadline:
        break
    s.sendto(b"probe", (ip, port))
    try:
        s.recvfrom(2048)
        got = 1
        break
    except OSError:
        pass
print(got)
"""

# Receiver: prints "ready", counts datagrams until `idle` s of silence (or the
# deadline), then prints the count and the distinct source addresses. With a
# fourth argument "each" it also prints every datagram's source as it comes,
# as "from IP PORT" (the NAT test needs the port the router mapped a flow to).
RECEIVER = r"""
import socket, struct, sys, time
group, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
each = sys.argv[4:] == ["each"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
s.bind(("0.0.0.0", port))
if group != "-":
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
print("ready", flush=True)
n, srcs, deadline = 0, set(), time.monotonic() + 30
for _ in range(100_000):
    left = min(idle, deadline - time.monotonic())
    if left <= 0:
        break
    s.settimeout(left)
    try:
        _, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    n += 1
    srcs.add(addr[0])
    if each:
        print("from", addr[0], addr[1], flush=True)
print(n, *sorted(srcs))
"""

# Sender: `count` datagrams to ip:port, paced so no socket buffer overflows.
SENDER = r"""
import socket, sys, time
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for i in range(count):
    s.sendto(b"datagram %d" % i, (ip, port))
    time.sleep(0.0005)
"""


def wait_ready(host: Host, log_name: str, proc: subprocess.Popen[bytes],
               timeout: float = 10.0) -> None:
    """Block until a helper started with popen printed "ready" (bounded)."""
    out, err = host.log_paths(log_name)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if out.exists() and "ready" in out.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"{log_name} on {host.name} exited: {err.read_text()}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    pytest.fail(f"{log_name} on {host.name} never became ready")


def start_echo(host: Host, bind: str = "0.0.0.0") -> None:
    proc = host.popen([sys.executable, "-c", ECHO_SERVER, str(PORT), bind], log_name=f"echo{bind}")
    wait_ready(host, f"echo{bind}", proc)


def echo_ok(client: Host, ip: str, limit: float = 3.0) -> bool:
    """Whether a datagram from ``client`` to ``ip`` comes back within ``limit`` s."""
    cp = client.python(ECHO_PROBE, ip, str(PORT), str(limit), timeout=limit + 10)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip() == "1"


def count_received(sender: Host, receivers: list[Host], dest: str, count: int,
                   idle: float = 1.0, group: str = "-", port: int = PORT + 1,
                   ) -> dict[str, tuple[int, list[str]]]:
    """Send ``count`` datagrams to ``dest``; return per receiver (n received, sources)."""
    procs = {}
    for r in receivers:
        procs[r.name] = r.popen([sys.executable, "-c", RECEIVER, group, str(port), str(idle)],
                                log_name=f"recv{port}")
        wait_ready(r, f"recv{port}", procs[r.name])
    cp = sender.python(SENDER, dest, str(port), str(count), timeout=30)
    assert cp.returncode == 0, cp.stderr
    result = {}
    for r in receivers:
        procs[r.name].wait(timeout=40)
        last = r.log_paths(f"recv{port}")[0].read_text().splitlines()[-1].split()
        result[r.name] = (int(last[0]), last[1:])
    return result


MakeLab = Callable[..., NetnsLab]


def test_hosts_have_own_addresses_and_reach_each_other(netns_lab: MakeLab) -> None:
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                timeout=10).stdout
    lab = netns_lab(2)
    a, b = lab.hosts
    assert a.ip != b.ip and {a.ip, b.ip} <= {str(x) for x in SUBNET.hosts()}
    assert a.ping(b.ip, count=2) == 2
    assert b.ping(a.ip, count=1) == 1
    start_echo(b)
    assert echo_ok(a, b.ip)
    # Nothing of the lab is visible from the root namespace: no link, address or route.
    root = {cmd: subprocess.run(["ip", "-o", *cmd.split()], capture_output=True, text=True,
                                timeout=10).stdout
            for cmd in ("link", "addr", "route")}
    assert root["link"] == root_links
    net = str(SUBNET.network_address).rsplit(".", 1)[0] + "."
    assert net not in root["addr"] and net not in root["route"]


def test_public_hosts_have_a_global_address_and_the_lab_stays_closed(netns_lab: MakeLab) -> None:
    lab = netns_lab(3, public=[0])
    a, b, c = lab.hosts
    assert a.public_ip is not None and ipaddress.ip_address(a.public_ip) in PUBLIC_SUBNET
    assert ipaddress.ip_address(a.public_ip).is_global and b.public_ip is None
    # A closed box: no route out of any namespace, nothing of the lab in the root namespace.
    assert lab.isolation_problems() == []
    out = b.python("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('1.1.1.1', 9))",
                   timeout=10)
    assert "Network is unreachable" in out.stderr
    start_echo(a)  # bound to 0.0.0.0: answers on both of a's addresses
    assert echo_ok(b, a.public_ip) and echo_ok(c, a.ip)
    lab.partition([b], [a])  # fault rules cover every address of a host
    assert not echo_ok(b, a.public_ip, limit=1.0) and not echo_ok(b, a.ip, limit=1.0)
    lab.heal()
    lab.drop_incoming(a, "udp", PORT)  # one protocol and port only: ICMP still passes
    assert not echo_ok(c, a.public_ip, limit=1.0)
    assert c.ping(a.public_ip) == 1
    lab.heal()
    assert echo_ok(c, a.public_ip)


def test_ipv6_lab_has_ula_addresses_and_faults_cover_them(netns_lab: MakeLab) -> None:
    lab = netns_lab(2, ipv6=True)
    a, b = lab.hosts
    assert (a.ip6, b.ip6) == ("fd00:213:7::11", "fd00:213:7::12")
    assert ipaddress.ip_address(b.ip6) in SUBNET6 and lab.isolation_problems() == []
    start_echo(b, bind="::")
    assert echo_ok(a, b.ip6)
    lab.partition([a], [b])
    assert not echo_ok(a, b.ip6, limit=1.0)
    lab.heal()
    assert echo_ok(a, b.ip6)


def test_partition_blocks_and_heal_restores(netns_lab: MakeLab) -> None:
    lab = netns_lab(3)
    a, b, c = lab.hosts
    start_echo(b)
    assert echo_ok(a, b.ip)
    lab.partition([a], [b, c])
    assert not echo_ok(a, b.ip, limit=1.0)
    assert echo_ok(c, b.ip)  # c and b are on the same side
    lab.heal()
    assert "DROP" not in lab.rules(a) + lab.rules(b) + lab.rules(c)
    assert echo_ok(a, b.ip)


def test_one_way_partition(netns_lab: MakeLab) -> None:
    lab = netns_lab(2)
    a, b = lab.hosts
    lab.partition([a], [b], symmetric=False)
    assert count_received(a, [b], b.ip, 20, idle=0.5)["h1"][0] == 0
    assert count_received(b, [a], a.ip, 20, idle=0.5)["h0"][0] == 20


def test_full_and_random_loss(netns_lab: MakeLab) -> None:
    lab = netns_lab(2)
    a, b = lab.hosts
    lab.set_loss(b, 1.0, "both")
    assert count_received(a, [b], b.ip, 50, idle=0.5)["h1"][0] == 0
    lab.set_loss(b, 0.5, "in")  # replaces the 100 % loss on "in"; "out" stays at 100 %
    n = 400
    got = count_received(a, [b], b.ip, n)["h1"][0]
    assert 0.2 * n <= got <= 0.8 * n, got
    lab.set_loss(b, 0.0)
    assert count_received(a, [b], b.ip, 50, idle=0.5)["h1"][0] == 50


def test_multicast_crosses_bridge_and_respects_partitions(netns_lab: MakeLab) -> None:
    lab = netns_lab(3)
    a, b, c = lab.hosts
    mdns = dict(group="224.0.0.251", port=5353, idle=0.7)
    got = count_received(a, [b, c], "224.0.0.251", 10, **mdns)  # type: ignore[arg-type]
    assert got == {"h1": (10, [a.ip]), "h2": (10, [a.ip])}
    lab.partition([a], [c])
    got = count_received(a, [b, c], "224.0.0.251", 10, **mdns)  # type: ignore[arg-type]
    assert got == {"h1": (10, [a.ip]), "h2": (0, [])}


def test_set_ip_moves_host(netns_lab: MakeLab) -> None:
    lab = netns_lab(2)
    a, b = lab.hosts
    start_echo(b)  # bound to 0.0.0.0: keeps running across the move
    old = b.ip
    lab.set_ip(b, "10.213.7.99")
    assert b.ip == "10.213.7.99"
    assert "10.213.7.99/24" in b.run(["ip", "-o", "addr", "show", "dev", "eth0"], timeout=10).stdout
    assert echo_ok(a, b.ip)
    assert not echo_ok(a, old, limit=1.0)
    lab.partition([a], [b])  # rules follow the new address
    assert not echo_ok(a, b.ip, limit=1.0)
    lab.heal()
    assert echo_ok(a, b.ip)
    with pytest.raises(ValueError):
        lab.set_ip(b, a.ip)
    with pytest.raises(ValueError):
        lab.set_ip(b, "192.168.1.5")


def test_http_get_json_runs_inside_namespace(netns_lab: MakeLab) -> None:
    lab = netns_lab(2)
    a, b = lab.hosts
    server = ("import http.server, json, sys\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self):\n"
              "        body = json.dumps({'peer': self.client_address[0]}).encode()\n"
              "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
              "    def log_message(self, *a): pass\n"
              "s = http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), H)\n"
              "print('ready', flush=True)\n"
              "s.timeout = 30\n"
              "for _ in range(10): s.handle_request()\n")
    proc = b.popen([sys.executable, "-c", server, str(PORT + 2)], log_name="http")
    wait_ready(b, "http", proc)
    assert a.http_get_json(f"http://{b.ip}:{PORT + 2}/") == {"peer": a.ip}
    assert b.http_get_json(f"http://127.0.0.1:{PORT + 2}/") == {"peer": "127.0.0.1"}
    lab.partition([a], [b])
    with pytest.raises(NetnsError):
        a.http_get_json(f"http://{b.ip}:{PORT + 2}/", timeout=1.0)


def test_destroy_removes_everything_and_is_idempotent(netns_lab: MakeLab) -> None:
    lab = netns_lab(2)
    proc = lab.hosts[0].popen(["sleep", "30"], log_name="sleep")
    assert set(lab.namespaces) <= set(list_lab_namespaces())
    lab.destroy()
    assert proc.poll() is not None
    assert not [n for n in list_lab_namespaces() if n.startswith(lab.prefix)]
    lab.destroy()


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from netns import NetnsLab
lab = NetnsLab(2, log_dir=sys.argv[2], nat=[1]).create()  # with a home router: its namespaces too
p = lab.hosts[0].popen(["sleep", "60"], log_name="sleep")
print(lab.prefix, p.pid, flush=True)
import time; time.sleep(60)
"""


def test_aborted_lab_is_swept(tmp_path: Path, netns_lab: MakeLab) -> None:
    """A run killed with SIGKILL (no finalizer, no atexit) is cleaned by the sweep."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).parent),
                              str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "child never created its lab"
        prefix, sleeper = child.stdout.readline().split()  # type: ignore[union-attr]
        assert [n for n in list_lab_namespaces() if n.startswith(prefix)]
        assert prefix not in "".join(sweep_stale())  # owner alive: left alone
        assert [n for n in list_lab_namespaces() if n.startswith(prefix)]
    finally:
        child.kill()
        child.wait(timeout=10)
    swept = sweep_stale()
    assert sorted(n for n in swept if n.startswith(prefix)) == sorted(
        [f"{prefix}h0", f"{prefix}h1", f"{prefix}hub", f"{prefix}router", f"{prefix}nathub"])
    assert not [n for n in list_lab_namespaces() if n.startswith(prefix)]
    # The process the dead run had started inside its namespace is gone too.
    pid = int(sleeper)
    for _ in range(100):
        if _proc_starttime(pid) is None or _is_zombie(pid):
            break
        time.sleep(0.05)
    assert _proc_starttime(pid) is None or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_prefix_must_be_sweepable() -> None:
    with pytest.raises(ValueError):
        NetnsLab(2, prefix="other-")
    with pytest.raises(ValueError):
        NetnsLab(0)


# From a fixed local port, one datagram to ip:port (the NAT keeps that flow's mapping).
SEND_FROM = r"""
import socket, sys
ip, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
s.sendto(b"out", (ip, port))
"""

# TCP connect with a deadline: prints "ok" or the error's class name.
TCP_CONNECT = r"""
import socket, sys
ip, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((ip, port), timeout=limit).close()
    print("ok")
except OSError as e:
    print(type(e).__name__)
"""

TCP_PEER_SERVER = ("import http.server, json, sys\n"
                   "class H(http.server.BaseHTTPRequestHandler):\n"
                   "    def do_GET(self):\n"
                   "        body = json.dumps({'peer': self.client_address[0]}).encode()\n"
                   "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
                   "    def log_message(self, *a): pass\n"
                   "s = http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), H)\n"
                   "print('ready', flush=True)\n"
                   "s.timeout = 30\n"
                   "for _ in range(10): s.handle_request()\n")


def mapped_port(lab: NetnsLab, pub: Host, home: Host, sport: int, log_name: str) -> str:
    """The router's port for a flow home opens from ``sport`` to pub:PORT+5 (as pub sees the datagram)."""
    assert lab.router is not None
    recv = pub.popen([sys.executable, "-c", RECEIVER, "-", str(PORT + 5), "1.5", "each"], log_name=log_name)
    wait_ready(pub, log_name, recv)
    assert home.python(SEND_FROM, pub.public_ip, str(PORT + 5), str(sport), timeout=10).returncode == 0
    recv.wait(timeout=40)
    lines = pub.log_paths(log_name)[0].read_text().splitlines()
    seen = [line.split()[1:] for line in lines if line.startswith("from ")]
    assert len(seen) == 1 and seen[0][0] == lab.router.public_ip, seen
    return seen[0][1]


def test_home_router_masquerades_outbound_and_lets_nothing_in(netns_lab: MakeLab) -> None:
    lab = netns_lab(4, public=[0], nat=[2, 3])
    pub, plain, home, home2 = lab.hosts
    router = lab.router
    assert router is not None and router.public_ip == ROUTER_PUBLIC_IP
    assert home.behind_nat and ipaddress.ip_address(home.ip) in NAT_SUBNET and not pub.behind_nat
    # Still a closed box: the NAT'd hosts' default route ends at the router, which has none.
    assert lab.isolation_problems() == []
    out = home.python(TCP_CONNECT, "1.1.1.1", "9", "2", timeout=15)
    assert out.stdout.strip() in ("OSError", "TimeoutError", "ConnectionRefusedError") and "ok" not in out.stdout
    assert "default" not in router.run(["ip", "-o", "route", "show", "table", "all"]).stdout

    # Out: UDP and TCP reach public and plain lab hosts, which see the router's address.
    start_echo(pub)
    assert echo_ok(home, pub.public_ip)  # the reply comes back in through conntrack
    got = count_received(home, [pub], pub.public_ip, 5, idle=0.5)
    assert got["h0"] == (5, [router.public_ip])
    home_srv = home.popen([sys.executable, "-c", TCP_PEER_SERVER, str(PORT + 3)], log_name="http-home")
    srv = pub.popen([sys.executable, "-c", TCP_PEER_SERVER, str(PORT + 2)], log_name="http")
    wait_ready(pub, "http", srv)
    assert home.http_get_json(f"http://{pub.public_ip}:{PORT + 2}/") == {"peer": router.public_ip}
    assert home.http_get_json(f"http://{pub.ip}:{PORT + 2}/") == {"peer": router.public_ip}
    assert plain.http_get_json(f"http://{pub.ip}:{PORT + 2}/") == {"peer": plain.ip}

    # In: nobody outside opens a connection to or delivers a datagram to a NAT'd host.
    wait_ready(home, "http-home", home_srv)
    for target in (home.ip, router.public_ip):
        assert pub.python(TCP_CONNECT, target, str(PORT + 3), "2", timeout=15).stdout.strip() != "ok"
        assert plain.python(TCP_CONNECT, target, str(PORT + 3), "2", timeout=15).stdout.strip() != "ok"
    assert count_received(pub, [home], router.public_ip, 10, idle=0.5, port=PORT + 4)["h2"][0] == 0
    # Not even to the port a flow of home's is mapped to, from another port of the host it talks
    # to (port-restricted): only the address *and port* home sent to gets an answer in.
    mapped = mapped_port(lab, pub, home, sport=PORT + 6, log_name="sources")
    sink = home.popen([sys.executable, "-c", RECEIVER, "-", str(PORT + 6), "1.0"], log_name=f"recv{PORT + 6}")
    wait_ready(home, f"recv{PORT + 6}", sink)
    assert pub.python(SEND_FROM, router.public_ip, mapped, str(PORT + 7), timeout=10).returncode == 0
    assert pub.python(SENDER, router.public_ip, mapped, "5", timeout=10).returncode == 0
    sink.wait(timeout=40)
    assert home.log_paths(f"recv{PORT + 6}")[0].read_text().splitlines()[-1].split()[0] == "0"
    # The control: from the port home sent to, the same datagram does get in (a conntrack reply).
    mapped9 = mapped_port(lab, pub, home, sport=PORT + 9, log_name="sources2")
    back = home.popen([sys.executable, "-c", RECEIVER, "-", str(PORT + 9), "1.0"], log_name=f"recv{PORT + 9}")
    wait_ready(home, f"recv{PORT + 9}", back)
    assert pub.python(SEND_FROM, router.public_ip, mapped9, str(PORT + 5), timeout=10).returncode == 0
    back.wait(timeout=40)
    assert home.log_paths(f"recv{PORT + 9}")[0].read_text().splitlines()[-1].split()[:2] == ["1", pub.public_ip]

    # Two hosts behind the same router talk directly on the private bridge, private addresses seen.
    assert count_received(home2, [home], home.ip, 5, idle=0.5, port=PORT + 8)["h2"] == (5, [home2.ip])
    start_echo(home)
    assert echo_ok(home2, home.ip)

    # Faults still apply at a NAT'd host; the router's namespaces go with the lab.
    lab.partition([home], [pub])
    assert not echo_ok(home, pub.public_ip, limit=1.0)
    lab.heal()
    assert echo_ok(home, pub.public_ip)
    assert {router.ns, router.lan_hub} <= set(list_lab_namespaces())
    lab.destroy()
    assert not [n for n in list_lab_namespaces() if n.startswith(lab.prefix)]


def test_nat_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="both public and behind NAT"):
        NetnsLab(2, public=[0], nat=[0])
    with pytest.raises(ValueError, match="nat host indexes"):
        NetnsLab(2, nat=[2])
    with pytest.raises(ValueError, match="IPv4 only"):
        NetnsLab(2, nat=[1], ipv6=True)
