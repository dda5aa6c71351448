"""Server-Sent Events framing, and streams that end with an error event instead of a silent cut."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from core.errors import RagopsError

log = logging.getLogger(__name__)


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    """What a client is told when a stream fails after it started."""
    if isinstance(exc, RagopsError):
        return {"error": {"message": str(exc), "type": type(exc).__name__, "request_id": request_id}}
    log.exception("stream failed", extra={"request_id": request_id})
    return {"error": {"message": "internal error", "type": "InternalError", "request_id": request_id}}


def guarded(frames: Iterator[bytes], request_id: str, event: str | None = "error") -> Iterator[bytes]:
    """Pass frames through; a failure becomes a final error frame."""
    try:
        yield from frames
    except Exception as exc:  # reported to the client as the stream's last event
        yield sse(error_payload(exc, request_id), event)
