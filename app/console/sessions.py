"""Console logins: an API key exchanged once for a random session id held in an HttpOnly cookie.

The key itself is never kept: a session remembers the key's id and re-reads the key (scopes,
grants, revocation) at most every ``recheck_s`` seconds, so revoking a key ends its sessions
within that time, like the API's verified-key cache. Only a sha256 of the session id is held,
with the session's CSRF token, in this process's memory: a restart logs everyone out, and an API
served by several processes needs sticky sessions for the console.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import psycopg

from app.keys import ApiKey, get_key
from core.errors import AuthError


@dataclass
class Session:
    """One console login."""

    csrf: str
    key: ApiKey
    expires_at: float
    checked_at: float

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether ``presented`` is this session's CSRF token (constant time)."""
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), (presented or "").encode())


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class SessionStore:
    """Live console sessions of this process, by the hash of their id."""

    def __init__(self, ttl_s: float, recheck_s: float = 2.0, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.recheck_s = recheck_s
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, Session] = {}
        self._lock = threading.Lock()

    def create(self, key: ApiKey) -> tuple[str, Session]:
        """A new session for ``key``: returns its id (for the cookie, never stored) and the session."""
        now = time.monotonic()
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), key=key, expires_at=now + self.ttl_s, checked_at=now)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self._sessions = {d: s for d, s in self._sessions.items() if s.expires_at > now}
                if len(self._sessions) >= self.max_sessions:  # still full: the oldest login goes
                    del self._sessions[min(self._sessions, key=lambda d: self._sessions[d].expires_at)]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(
        self, session_id: str | None, connect: Callable[[], AbstractContextManager[psycopg.Connection]]
    ) -> Session | None:
        """The live session ``session_id`` names, its key re-read when due; None when absent, expired or revoked."""
        if not session_id or len(session_id) > 100:
            return None
        digest, now = _digest(session_id), time.monotonic()
        with self._lock:
            session = self._sessions.get(digest)
        if session is None or session.expires_at <= now:
            self.end(session_id)
            return None
        if now - session.checked_at >= self.recheck_s:
            try:
                with connect() as conn:
                    session.key = get_key(conn, session.key.id)
            except AuthError:
                self.end(session_id)
                return None
            session.checked_at = now
        return session

    def end(self, session_id: str) -> None:
        """Forget a session (logout); unknown ids are ignored."""
        with self._lock:
            self._sessions.pop(_digest(session_id), None)
