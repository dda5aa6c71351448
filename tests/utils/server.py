"""Run an ASGI app on a real loopback socket in a thread (for concurrency and disconnect tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, *, lifespan: bool = True, timeout_s: float = 60.0, keep_alive_s: int = 5
) -> Iterator[str]:
    """Serve ``app`` with uvicorn until the block ends; yields its base URL.

    ``lifespan=False`` serves an app whose lifespan already runs elsewhere (e.g. in a TestClient).
    ``keep_alive_s`` longer than uvicorn's 5 s keeps benchmark clients' connections between rounds.
    """
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on" if lifespan else "off",
        timeout_keep_alive=keep_alive_s,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def wait_for(predicate: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` until it is true (work done after a response, e.g. ledger rows); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
