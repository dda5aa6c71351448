"""The one error shape, ``{"error": {"message", "type", "param", "code"}}``, for every response,
SSE ``error`` event and OpenAI-compatible stream."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from core.errors import RagopsError

log = logging.getLogger("ragops")


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """The error shape itself."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_of(exc: BaseException, request_id: str) -> dict[str, Any]:
    """What a client is told of an error: ours say what went wrong; anything else is logged, never echoed."""
    if isinstance(exc, RagopsError):
        return error_body(exc.status, str(exc), type(exc).__name__, exc.field)
    log.error("unhandled error (request %s)", request_id, exc_info=exc)
    return error_body(500, "internal error", "InternalError")


def error_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response carrying an error body, with its status."""
    return JSONResponse(body, status_code=body["error"]["code"], headers=headers)
