"""Snapshots of a data directory for a hand-over between nodes: pack, fetch, restore.

For an engine without replication (ChromaDB) a planned hand-over moves the
data itself: the old copy stops its engine (which flushes it), packs its
data directory as a tar archive and serves it; the new copy downloads it and
restores it in place of its own data before its engine starts.

``restore`` swaps directories by rename, so a crash half-way leaves either
the old data or the new, never a mix; members that would land outside the
target (absolute paths, ``..``, links) are refused (tarfile's ``data``
filter).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import aiohttp

from services.runner import RunnerError


def pack(directory: Path, archive: Path) -> int:
    """Write ``directory``'s contents to ``archive`` (tar, uncompressed); its size in bytes."""
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w") as tar:
        if directory.exists():
            for entry in sorted(directory.iterdir()):
                tar.add(entry, arcname=entry.name)
    os.replace(tmp, archive)
    return archive.stat().st_size


def restore(archive: Path, target: Path, keep: Path | None = None) -> None:
    """Replace ``target`` with the contents of ``archive``; ``RunnerError`` if the archive is bad.

    ``keep``: where the replaced contents go (replacing an earlier ``keep``),
    instead of being deleted; only when ``target`` held anything.
    """
    incoming = target.with_name(target.name + ".incoming")
    previous = keep if keep is not None and target.exists() and any(target.iterdir()) else target.with_name(target.name + ".previous")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r") as tar:
            tar.extractall(incoming, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        raise RunnerError(f"snapshot {archive} cannot be restored: {exc}") from None
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.replace(target, previous)
    os.replace(incoming, target)
    if previous != keep:
        shutil.rmtree(previous, ignore_errors=True)


async def fetch(url: str, password: str, archive: Path, timeout: float) -> int:
    """Download the snapshot at ``url`` (``Authorization: Bearer password``) to ``archive``; its size.

    Raises ``RunnerError`` with what went wrong (refused, unreachable, cut short).
    """
    tmp = archive.with_name(archive.name + ".part")
    size = 0
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers={"Authorization": f"Bearer {password}"}) as response,
        ):
            if response.status != 200:
                text = (await response.text())[:200]
                raise RunnerError(f"snapshot {url}: HTTP {response.status}: {text}")
            expected = response.content_length
            with open(tmp, "wb") as out:  # noqa: ASYNC230 - 64 KiB writes; a thread per chunk would cost more
                async for chunk in response.content.iter_chunked(1 << 16):
                    out.write(chunk)
                    size += len(chunk)
            if expected is not None and size != expected:
                raise RunnerError(f"snapshot {url}: cut short at {size} of {expected} bytes")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise RunnerError(f"snapshot {url}: {exc or type(exc).__name__}") from None
    except RunnerError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, archive)
    return size
