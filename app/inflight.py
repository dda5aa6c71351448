"""Per-key concurrency: at most N requests of one key in flight in this process.

A client that opens many slow requests (long streams, huge histories) would otherwise hold
every worker thread and database connection; past its limit it gets 429 with Retry-After.
The slot is taken once the key is verified and given back when the request's meter closes,
whatever the outcome (an answer, an error, a hang-up mid-stream).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.keys import ApiKey
from core.errors import RateLimited

RETRY_AFTER_S = 1


@dataclass
class Slot:
    """One request's place in its key's count; releasing twice is harmless."""

    limiter: InFlight
    key_id: int
    released: bool = field(default=False)

    def release(self) -> None:
        """Give the place back (once)."""
        if not self.released:
            self.released = True
            self.limiter.release(self.key_id)


class InFlight:
    """Counts each key's requests in flight; ``limit`` None or 0 turns the limit off."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit or None
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: ApiKey) -> Slot | None:
        """A slot for one more request of ``key``; :class:`RateLimited` when it already has ``limit``."""
        if self.limit is None:
            return None
        with self._lock:
            count = self._counts.get(key.id, 0)
            if count >= self.limit:
                raise RateLimited(
                    f"API key {key.name!r} already has {count} requests in flight; the limit is {self.limit} "
                    "concurrent requests per key",
                    RETRY_AFTER_S,
                )
            self._counts[key.id] = count + 1
        return Slot(self, key.id)

    def release(self, key_id: int) -> None:
        """One request of ``key_id`` is over."""
        with self._lock:
            count = self._counts.get(key_id, 0) - 1
            if count > 0:
                self._counts[key_id] = count
            else:
                self._counts.pop(key_id, None)

    def count(self, key_id: int) -> int:
        """Requests of ``key_id`` in flight now."""
        with self._lock:
            return self._counts.get(key_id, 0)
