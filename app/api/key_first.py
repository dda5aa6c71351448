"""Routes whose API key is checked from the request headers before the body is read.

An upload body can be hundreds of megabytes: FastAPI reads and spools a form body before any
dependency runs, so a request without a valid admin key would cost all of that before its 401.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from app.api.deps import require_admin


class AdminKeyFirst(APIRoute):
    """An admin route: the key (and its admin scope) is verified before the body is received."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def key_first(request: Request) -> Response:
            await run_in_threadpool(require_admin, request)  # the route's own AdminKey then reuses it
            return await handler(request)

        return key_first
