"""Server-Sent Events framing, and streams that end with an error event instead of a silent cut."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from app.api.errors import error_of


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def guarded(frames: Iterator[bytes], request_id: str, event: str | None = "error") -> Iterator[bytes]:
    """Pass frames through; a failure becomes a final error frame in the one error shape."""
    try:
        yield from frames
    except Exception as exc:  # reported to the client as the stream's last event
        yield sse(error_of(exc, request_id), event)
