"""Pieces the web tests share: a request-id middleware and its context variable."""

from __future__ import annotations

import contextvars
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class RequestIdMiddleware:
    """Sets ``request_id`` from the ``x-request-id`` header for the request, then resets it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = request_id.set(headers.get(b"x-request-id", b"").decode() or None)
        try:
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)
