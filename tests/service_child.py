"""A service child for the supervisor tests: the real ``services.runners.serve`` shell, no model.

``CHILD_MODE`` picks how it behaves:

- ``ok``: ready at once; ``/echo`` answers;
- ``never``: binds and announces, then "loads" forever (``/health`` 503);
- ``cannot``: its preflight says it cannot run here (exit 78 before binding);
- ``crash``: ready, then exits with status 3 after ``CHILD_CRASH_AFTER`` seconds (default 0.3);
- ``progress``: "loads" in five steps of ``CHILD_STEP`` seconds (default 0.4), reporting
  20 %, 40 %... as an engine that can tell does.

Run: ``python tests/service_child.py --service S --port 0``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from services.runners.serve import CannotRun, Engine, Route, main


class ChildEngine(Engine[str]):
    backend = "test-child"

    def preflight(self, env: Mapping[str, str]) -> None:
        if env.get("CHILD_MODE") == "cannot":
            raise CannotRun("model 'nothing' not found (test)")

    def load_reporting(self, env: Mapping[str, str], report: Callable[[float], None]) -> str:
        if env.get("CHILD_MODE") == "progress":
            for step in range(5):
                report(step / 5)
                time.sleep(float(env.get("CHILD_STEP", "0.4")))
            report(1.0)
        return self.load(env)

    def load(self, env: Mapping[str, str]) -> str:
        mode = env.get("CHILD_MODE", "ok")
        if mode == "never":
            while True:
                time.sleep(3600)
        if mode == "crash":
            delay = float(env.get("CHILD_CRASH_AFTER", "0.3"))

            def die() -> None:
                time.sleep(delay)
                os._exit(3)

            import threading

            threading.Thread(target=die, daemon=True).start()
        return mode

    def describe(self, loaded: str) -> dict[str, Any]:
        return {"model": f"test-model-{loaded}"}

    def routes(self) -> Sequence[Route[str]]:
        async def echo(loaded: str, request: web.Request) -> web.Response:
            return web.json_response({"mode": loaded, "pid": os.getpid()})

        return (Route("GET", "/echo", echo),)


if __name__ == "__main__":
    main(ChildEngine())
