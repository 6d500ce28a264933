"""What this machine has (for ``--type auto`` and capabilities) and how busy it is.

Mechanism. :func:`detect` takes one snapshot of the slow-changing facts:
CPUs, memory, GPUs and their VRAM (NVML through pynvml), whether a Docker
engine answers, whether an interface holds a public address, and the size
of the disk under the data dir. It runs once at start. :class:`LoadSampler`
(or the one-shot :func:`sample_load`) reads the fast-changing figures every
few seconds: CPU, memory and GPU utilisation.

Absence is normal, not an error: no NVML library, no NVIDIA driver, no GPU,
no Docker all simply read as zero/False. Every probe is bounded in time (the
Docker check has a timeout) so a wedged daemon or driver cannot hang start-up.

``auto`` worker type (DESIGN "Allocation": GPU -> edge -> storage -> CPU),
in :func:`resolve_worker_type`:

1. ``gpu``     if at least one NVIDIA GPU is visible;
2. ``edge``    else if an interface has a public (globally routable) address,
               so the node can be a bootstrap/introducer others reach;
3. ``storage`` else if a Docker engine is reachable (the storage services,
               Redis, PostgreSQL, ChromaDB, MinIO, Neo4j, run as containers)
               or the data dir's file system is at least
               :data:`STORAGE_DISK_BYTES` (900 GB, so a nominal 1 TB disk
               qualifies after file-system overhead);
4. ``cpu``     otherwise.

Disk *total* rather than free space is used so that the type of a machine
does not flip between restarts as its disk fills.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NamedTuple

import psutil

log = logging.getLogger(__name__)

WORKER_TYPES = ("gpu", "cpu", "storage", "edge")
#: File-system size from which a machine without Docker counts as storage.
STORAGE_DISK_BYTES = 900 * 10**9
DEFAULT_DOCKER_TIMEOUT = 1.0
_DEFAULT_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


class GpuInfo(NamedTuple):
    """One GPU: ``(name, vram_total, vram_free)``, VRAM in bytes."""

    name: str
    vram_total: int
    vram_free: int


@dataclass(frozen=True)
class Hardware:
    """A snapshot of this machine's capabilities. Byte counts are bytes."""

    cpu_count: int
    memory_total: int
    gpu_count: int = 0
    gpus: tuple[GpuInfo, ...] = ()
    has_docker: bool = False
    public_ip: bool = False
    disk_total: int = 0

    def __post_init__(self) -> None:
        if self.cpu_count < 0 or self.memory_total < 0 or self.gpu_count < 0 or self.disk_total < 0:
            raise ValueError("hardware counts must be non-negative")

    @property
    def vram_total(self) -> int:
        """Sum of all GPUs' VRAM in bytes."""
        return sum(g.vram_total for g in self.gpus)


@dataclass(frozen=True)
class Load:
    """Current utilisation, each a percentage in 0..100."""

    cpu_percent: float
    memory_percent: float
    gpu_utilization: float = 0.0


def resolve_worker_type(requested: str, hw: Hardware) -> str:
    """The worker type to run as: ``requested`` unless it is ``auto`` (rule in the module docstring).

    Raises ``ValueError`` for an unknown type.
    """
    kind = requested.strip().lower()
    if kind in WORKER_TYPES:
        return kind
    if kind != "auto":
        raise ValueError(f"unknown worker type {requested!r}; expected auto or one of {', '.join(WORKER_TYPES)}")
    if hw.gpu_count > 0:
        return "gpu"
    if hw.public_ip:
        return "edge"
    if hw.has_docker or hw.disk_total >= STORAGE_DISK_BYTES:
        return "storage"
    return "cpu"


def detect(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    docker_timeout: float = DEFAULT_DOCKER_TIMEOUT,
) -> Hardware:
    """Probe this machine once.

    Blocking (a daemon calls it through ``asyncio.to_thread``); bounded by a
    few ``docker_timeout`` (socket ping, then the ``docker`` CLI) plus NVML's
    start-up.
    """
    gpus = detect_gpus()
    return Hardware(
        cpu_count=_cpu_count(),
        memory_total=int(psutil.virtual_memory().total),
        gpu_count=len(gpus),
        gpus=gpus,
        has_docker=docker_reachable(docker_timeout),
        public_ip=bool(public_addresses()),
        disk_total=_disk_total(Path(data_dir) if data_dir is not None else Path.home()),
    )


def _cpu_count() -> int:
    # CPUs this process may run on (containers and taskset restrict it), not the host's total.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def _disk_total(path: Path) -> int:
    # The data dir may not exist yet: measure the nearest existing ancestor.
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return int(psutil.disk_usage(str(candidate)).total)
            except OSError:
                return 0
    return 0


def _import_pynvml() -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            # pynvml >= 12 warns on import that it is a shim for nvidia-ml-py; it still works.
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs via NVML; empty when pynvml, the driver or a GPU is missing."""
    nvml = _import_pynvml()
    if nvml is None:
        return ()
    try:
        nvml.nvmlInit()
    except (nvml.NVMLError, OSError) as exc:
        log.debug("no NVML (%s): assuming no GPU", exc)
        return ()
    gpus: list[GpuInfo] = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuInfo(str(name), int(mem.total), int(mem.free)))
    except (nvml.NVMLError, OSError) as exc:
        log.warning("NVML failed while listing GPUs (%s); using the %d found so far", exc, len(gpus))
    finally:
        with contextlib.suppress(nvml.NVMLError, OSError):
            nvml.nvmlShutdown()
    return tuple(gpus)


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address (not private, loopback, link-local, CGNAT)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_global
        and not ip.is_private
        and not ip.is_loopback
        and not ip.is_link_local
        and not ip.is_multicast
        and not ip.is_reserved
    )


def public_addresses(if_addrs: Mapping[str, Iterable[Any]] | None = None) -> list[str]:
    """The public addresses on this machine's interfaces (``psutil.net_if_addrs()`` by default)."""
    table = psutil.net_if_addrs() if if_addrs is None else if_addrs
    found: list[str] = []
    for addrs in table.values():
        for snic in addrs:
            if snic.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if is_public_address(snic.address) and snic.address not in found:
                found.append(snic.address)
    return found


def docker_reachable(
    timeout: float = DEFAULT_DOCKER_TIMEOUT,
    *,
    env: Mapping[str, str] | None = None,
    sockets: Sequence[str] | None = None,
    use_cli: bool = True,
) -> bool:
    """Whether a Docker engine answers, within about ``timeout`` seconds.

    Tries ``GET /_ping`` on ``$DOCKER_HOST`` (unix:// or tcp:// without TLS)
    or the usual sockets (``/var/run/docker.sock``, rootless
    ``$XDG_RUNTIME_DIR/docker.sock``, Docker Desktop's ``~/.docker/run``),
    then falls back to ``docker info`` (for TLS, contexts, ssh hosts) with the
    same timeout when the ``docker`` command exists.
    """
    environ = os.environ if env is None else env
    docker_host = environ.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        candidates: list[str] = [docker_host[len("unix://") :]]
    elif sockets is not None:
        candidates = list(sockets)
    else:
        candidates = list(_DEFAULT_DOCKER_SOCKETS)
        if environ.get("XDG_RUNTIME_DIR"):
            candidates.append(os.path.join(environ["XDG_RUNTIME_DIR"], "docker.sock"))
        candidates.append(os.path.expanduser("~/.docker/run/docker.sock"))
    for path in candidates:
        if os.path.exists(path) and _ping_unix(path, timeout):
            return True
    if docker_host.startswith("tcp://") and not environ.get("DOCKER_TLS_VERIFY"):
        hostport = docker_host[len("tcp://") :].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if host and port.isdigit() and _ping_tcp(host.strip("[]"), int(port), timeout):
            return True
    if use_cli and shutil.which("docker"):
        return _docker_cli(timeout, environ)
    return False


_PING = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"


def _ping(sock: socket.socket) -> bool:
    sock.sendall(_PING)
    reply = sock.recv(256)
    # "HTTP/1.0 200 OK" (or 1.1): the status line is enough.
    return reply.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]


def _ping_unix(path: str, timeout: float) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            return _ping(sock)
    except OSError:
        return False


def _ping_tcp(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return _ping(sock)
    except OSError:
        return False


def _docker_cli(timeout: float, environ: Mapping[str, str]) -> bool:
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


class LoadSampler:
    """Reads :class:`Load` cheaply and repeatedly; keeps NVML open between samples.

    The first CPU figure after creation is 0.0 (psutil measures since the
    previous call). NVML is opened on the first :meth:`sample` and closed by
    :meth:`close` (or ``with``); if it fails it is not retried and GPU
    utilisation reads 0.0.
    """

    def __init__(self) -> None:
        self._nvml: ModuleType | None = None
        self._handles: list[Any] = []
        self._nvml_tried = False

    def _open_nvml(self) -> None:
        self._nvml_tried = True
        nvml = _import_pynvml()
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError, OSError):
            return
        try:
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except (nvml.NVMLError, OSError) as exc:
            log.warning("NVML cannot list GPUs (%s): GPU utilisation will read 0", exc)
            with contextlib.suppress(nvml.NVMLError, OSError):
                nvml.nvmlShutdown()
            return
        self._nvml = nvml

    def sample(self) -> Load:
        """Current CPU, memory and mean GPU utilisation (0..100)."""
        if not self._nvml_tried:
            self._open_nvml()
        return Load(
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            memory_percent=float(psutil.virtual_memory().percent),
            gpu_utilization=self._gpu_utilization(),
        )

    def _gpu_utilization(self) -> float:
        nvml = self._nvml
        if nvml is None or not self._handles:
            return 0.0
        try:
            rates = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
        except (nvml.NVMLError, OSError) as exc:
            log.warning("NVML utilisation query failed (%s): GPU utilisation will read 0", exc)
            self.close()
            return 0.0
        return float(sum(rates)) / len(rates)

    def close(self) -> None:
        """Release NVML (idempotent)."""
        nvml, self._nvml = self._nvml, None
        self._handles = []
        if nvml is not None:
            with contextlib.suppress(nvml.NVMLError, OSError):
                nvml.nvmlShutdown()

    def __enter__(self) -> LoadSampler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def sample_load() -> Load:
    """One-shot :class:`Load`; a daemon sampling in a loop should keep a :class:`LoadSampler`."""
    with LoadSampler() as sampler:
        return sampler.sample()
