"""JSON error answers: every refusal says what is wrong, in one shape ``{"error": ..., ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)
