"""Start a real vLLM OpenAI-compatible server for integration tests.

vLLM lives in its own virtualenv (see ``scripts/vllm_venv.sh``); this module
only uses the standard library, so the app's venv, where the tests run, does
not need vLLM, torch or even httpx.

Usage::

    from tests.utils.tiny_llama import write_tiny_llama
    from tests.utils.vllm_server import VllmServer, find_vllm_python

    python = find_vllm_python()          # None -> skip the test
    model_dir = write_tiny_llama(tmp_path / "tiny")
    with VllmServer(model_dir, python=python) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused")
        client.chat.completions.create(model=server.model, messages=[...])

The server is started in its own process group (vLLM runs the engine in a
child process), so :meth:`VllmServer.stop` and :meth:`VllmServer.kill` end the
whole tree.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["VllmServer", "VllmServerError", "default_vllm_venv", "find_vllm_python"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Environment every server gets: no hub access, a 1 GiB KV cache, no telemetry.
BASE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    # vLLM's engine<->API-server message queue otherwise binds the host's IP.
    "VLLM_HOST_IP": "127.0.0.1",
}

# "RuntimeError: ...", "vllm...EngineDeadError: ...", "ValueError: ..." but not traceback frames.
_ERROR_LINE = re.compile(r"\b[A-Za-z_.]*(Error|Exception): \S")

# Loopback requests must never go through an HTTP(S)_PROXY from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Variables of the caller's (app) venv that must not leak into the vLLM venv.
_STRIPPED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")


class VllmServerError(RuntimeError):
    """The vLLM server failed to start or to answer; the message holds its log tail."""


# Read once, at import (collection), before the autouse settings isolation drops every RAGOPS_*
# variable for the test: read inside a function-scoped fixture or a test, they would be gone, and a
# required vLLM tier would skip silently instead of failing.
STARTUP_ENV = {
    key: os.environ[key]
    for key in ("RAGOPS_REQUIRE_VLLM", "RAGOPS_VLLM_VENV", "RAGOPS_VLLM_PYTHON")
    if key in os.environ
}


def default_vllm_venv() -> Path:
    """Return the vLLM venv location: ``$RAGOPS_VLLM_VENV`` or ``<repo>/.ragops/vllm-venv``."""
    env = STARTUP_ENV.get("RAGOPS_VLLM_VENV")
    return Path(env) if env else REPO_ROOT / ".ragops" / "vllm-venv"


def require_vllm_python() -> Path:
    """The vLLM venv's python; skips the test without it, or fails it when RAGOPS_REQUIRE_VLLM=1 (CI)."""
    import pytest

    python = find_vllm_python()
    if python is None:
        message = "vLLM venv missing: run scripts/vllm_venv.sh (./dev.sh test does)"
        if STARTUP_ENV.get("RAGOPS_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return python


def find_vllm_python() -> Path | None:
    """Return the python of the vLLM venv, or ``None`` when it is not installed.

    ``$RAGOPS_VLLM_PYTHON`` wins when set; otherwise ``<venv>/bin/python`` of
    :func:`default_vllm_venv`, but only when ``scripts/vllm_venv.sh`` finished
    (its stamp file exists).
    """
    explicit = STARTUP_ENV.get("RAGOPS_VLLM_PYTHON")
    if explicit:
        path = Path(explicit)
        return path if path.exists() else None
    venv = default_vllm_venv()
    python = venv / "bin" / "python"
    if python.exists() and (venv / ".ragops-vllm-stamp").exists():
        return python
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class VllmServer:
    """A vLLM OpenAI-compatible server running as a subprocess on loopback.

    Attributes:
        model: The served model name (what clients pass as ``model``).
        host: Always a loopback address.
        port: The TCP port, chosen free at :meth:`start` unless given.
        log_path: File receiving the server's stdout and stderr.
        startup_seconds: Wall time :meth:`start` took until the server answered.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        python: Path | str | None = None,
        served_model_name: str = "tiny-llama",
        max_model_len: int = 512,
        dtype: str = "float32",
        enforce_eager: bool = True,
        prompt_tokens_details: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 300.0,
        log_path: Path | str | None = None,
    ) -> None:
        """Configure (but do not start) a server.

        Args:
            model_dir: Checkpoint directory, e.g. from ``write_tiny_llama``.
            python: Interpreter of the vLLM venv; defaults to
                :func:`find_vllm_python`.
            served_model_name: Name exposed by ``/v1/models``.
            max_model_len: ``--max-model-len`` (prompt + completion tokens).
            dtype: ``--dtype``; float32 is the safe choice on CPU.
            enforce_eager: Pass ``--enforce-eager``: skips torch.compile, which
                costs ~30 s on a cold cache (start-up ~34 s instead of ~70 s)
                for no measurable latency difference with a tiny model.
            prompt_tokens_details: Pass ``--enable-prompt-tokens-details`` so
                ``usage.prompt_tokens_details.cached_tokens`` is filled (as with
                OpenAI) instead of ``null``.  Prefix caching is on by default;
                on CPU it caches whole 128-token blocks only.
            extra_args: More ``api_server`` arguments, appended last.
            env: Extra environment variables (override :data:`BASE_ENV`).
            host: Loopback address to bind.
            port: Fixed port; a free one is picked when ``None``.
            startup_timeout: Seconds to wait for the server to answer.
            log_path: Server log file; a temp file when ``None``.
        """
        resolved = Path(python) if python is not None else find_vllm_python()
        if resolved is None:
            raise VllmServerError(
                "no vLLM venv found: run scripts/vllm_venv.sh or set RAGOPS_VLLM_PYTHON / RAGOPS_VLLM_VENV"
            )
        self.python: Path = resolved
        self.model_dir = Path(model_dir)
        self.model = served_model_name
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.prompt_tokens_details = prompt_tokens_details
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.host = host
        self.port: int = port or 0
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ urls
    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` (for ``/health``, ``/metrics``, ``/tokenize``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ``http://HOST:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        """PID of the API server process (also its process-group id), if started."""
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        """Return True while the API server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -------------------------------------------------------------- commands
    def command(self) -> list[str]:
        """Return the argv used to start the server."""
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            self.dtype,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *(["--enforce-eager"] if self.enforce_eager else []),
            *(["--enable-prompt-tokens-details"] if self.prompt_tokens_details else []),
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
        env.update(BASE_ENV)
        env.update(self.extra_env)
        return env

    def start(self) -> VllmServer:
        """Start the server and block until it serves a 1-token completion.

        Retries with another port when the chosen one was taken meanwhile.

        Raises:
            VllmServerError: the process exited or did not answer within
                ``startup_timeout``; the message ends with the log tail.
        """
        if self.is_running():
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            try:
                self._spawn_and_wait()
                return self
            except VllmServerError:
                if attempt + 1 < attempts and "address already in use" in self.log_tail(200).lower():
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # own process group: stop/kill reach the engine core too
            )
        _LIVE.add(self)
        deadline = started + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise VllmServerError(self._failure(f"vLLM server exited with code {code} during start-up"))
            try:
                status, _ = self._request("GET", "/v1/models", timeout=2.0)
                if status == 200:
                    status, body = self._request(
                        "POST",
                        "/v1/completions",
                        {"model": self.model, "prompt": "hello", "max_tokens": 1, "temperature": 0},
                        timeout=60.0,
                    )
                    if status == 200 and body.get("choices"):
                        self.startup_seconds = time.monotonic() - started
                        return
                    last_error = f"warm-up completion answered {status}: {body}"
                else:
                    last_error = f"/v1/models answered {status}"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        self.stop()
        raise VllmServerError(
            self._failure(f"vLLM server did not answer within {self.startup_timeout:.0f}s ({last_error})")
        )

    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, *, timeout: float
    ) -> tuple[int, dict[str, Any]]:
        """Send one JSON request to the server; return (status, decoded JSON body or {})."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        return status, body if isinstance(body, dict) else {"data": body}

    # ------------------------------------------------------------- shutdown
    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole server process group at once (for fault-injection tests)."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._reap()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        """Kill any engine child left in the group once the API server is gone."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        _LIVE.discard(self)

    # ------------------------------------------------------------------ logs
    def log_tail(self, lines: int = 60) -> str:
        """Return the last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def error_lines(self, limit: int = 8) -> list[str]:
        """Return the last distinct ``...Error: ...`` lines of the log (the root cause, usually).

        vLLM logs the real cause in a worker traceback and then many lines of
        shutdown noise, so the plain tail alone often hides it.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        found: list[str] = []
        for line in text.splitlines():
            if _ERROR_LINE.search(line) and line not in found:
                found.append(line)
        return found[-limit:]

    def _failure(self, message: str) -> str:
        errors = "\n".join(self.error_lines()) or "(none found)"
        return f"{message}\nlog: {self.log_path}\n--- error lines ---\n{errors}\n--- last lines ---\n{self.log_tail()}"

    # ------------------------------------------------------- context manager
    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"VllmServer(model={self.model!r}, base_url={self.base_url!r}, {state})"


# Servers still running at interpreter exit are killed, so a crashed test run
# does not leave a vLLM engine eating the CPU.
_LIVE: set[VllmServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()
