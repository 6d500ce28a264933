"""Headless Chromium driven over the DevTools protocol (CDP), for tests that look at the dashboard.

``Browser.launch(workdir)`` starts Debian's ``chromium`` with
``--remote-debugging-port=0`` and reads the port it chose from
``DevToolsActivePort`` in its profile dir; ``browser.new_page()`` opens a tab
and attaches to it over the browser's one websocket (aiohttp's client, flat
sessions). A page can ``goto``, ``evaluate`` JavaScript, ``wait_for`` a
JavaScript condition (bounded in time) and take a ``screenshot``. The
process is killed by ``close()``; its stderr goes to a log file.

``find_chromium()`` finds the binary; ``ensure_chromium()`` installs the
``chromium`` package with apt-get when it is missing and we are root (as
``.ci/run`` does), and otherwise returns None so a test can skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str | None:
    path = find_chromium()
    if path is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False, capture_output=True, timeout=900)
    return find_chromium()


def chromium_or_skip() -> str:
    """Chromium's path for a browser test; the test skips without one, or fails under ``RMAP2P_REQUIRE_BROWSER=1``."""
    binary = ensure_chromium()
    if binary is None:
        if os.environ.get("RMAP2P_REQUIRE_BROWSER") == "1":
            pytest.fail("RMAP2P_REQUIRE_BROWSER=1 but no chromium and it could not be installed")
        pytest.skip("no chromium (install Debian's chromium package)")
    return binary


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, log: Path) -> None:
        self.proc = proc
        self.ws = ws
        self.http = session
        self.log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def launch(cls, workdir: Path, binary: str, timeout: float = 60.0) -> Browser:
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = workdir / "chromium.log"
        argv = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--window-size=1280,1000", "about:blank",
        ]
        proc = await asyncio.to_thread(_spawn, argv, log)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise CdpError(f"chromium exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    port, path = int(lines[0]), lines[1]
                    break
            if time.monotonic() > deadline:
                proc.kill()
                raise CdpError(f"chromium did not open its DevTools port in {timeout}s")
            await asyncio.sleep(0.1)
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=64 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except BaseException:
            await session.close()
            proc.kill()
            raise
        return cls(proc, ws, session, log)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        body: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            body["sessionId"] = session_id
        await self.ws.send_str(json.dumps(body))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def new_page(self, width: int = 1280, height: int = 1000, mobile: bool = False) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.resize(width, height, mobile)
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close", timeout=5), 5)
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.http.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


class Page:
    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session_id, timeout)

    async def resize(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
        )

    async def goto(self, url: str) -> None:
        reply = await self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CdpError(f"navigate {url}: {reply['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression[:80]}: {reply['exceptionDetails'].get('text')} {reply['exceptionDetails'].get('exception', {}).get('description', '')}")
        return reply.get("result", {}).get("value")

    async def wait_for(
        self, expression: str, timeout: float, what: str, pred: Callable[[Any], bool] = bool, interval: float = 0.25
    ) -> Any:
        """Poll a JavaScript expression until ``pred(value)``; returns the value or fails naming ``what``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):
                last = await self.evaluate(expression)
                if pred(last):
                    return last
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {last!r})")

    async def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics.get("contentSize")
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        reply = await self.send("Page.captureScreenshot", params, timeout=60)
        path.write_bytes(base64.b64decode(reply["data"]))
        return path
