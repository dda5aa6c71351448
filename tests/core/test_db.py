"""The embedded PostgreSQL is shared by every ragops process on one data folder.

Commands run beside ``ragops serve`` attach to its server and detach without stopping it; the
server stops when its last live user leaves, also when an earlier user was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from core import db
from core.db import EmbeddedPostgres, default_shared_buffers_mb, stop_embedded_postgres
from tests.utils.server import free_port

REPO = Path(__file__).resolve().parents[2]
QUESTION = {"question": "How many PTO days do new employees get?"}


def postmasters(pgdata: Path) -> list[psutil.Process]:
    """PostgreSQL processes serving ``pgdata`` (the postmaster names its data folder on its command line)."""
    folder = str(pgdata.resolve())
    found = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        if proc.info["name"] == "postgres" and folder in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def cli_env(data_dir: Path) -> dict[str, str]:
    """The environment of a user's shell: the embedded database under ``data_dir``, no URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGOPS_") and k != "DATABASE_URL"}
    env.update(
        RAGOPS_DATA_DIR=str(data_dir),
        RAGOPS_CONFIGS_DIR=str(REPO / "configs"),
        RAGOPS_PROMPTS_DIR=str(REPO / "prompts"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        COLUMNS="200",
    )
    return env


def ragops(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=180,
        check=False,
    )  # fmt: skip


class Watcher(threading.Thread):
    """Asks ``/readyz`` every quarter second and ``/v1/query`` every two; keeps every answer that is not a 200."""

    def __init__(self, base_url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        self.stopping = threading.Event()
        self.step = "start"
        self.indexed = False  # until then "no active index" is the one acceptable 503
        self.queries = 0
        self.failures: list[str] = []

    def run(self) -> None:
        asked = 0.0
        while not self.stopping.is_set():
            self.ask("GET", "/readyz")
            if time.monotonic() - asked >= 2:  # a query costs a CPU the commands beside need too
                asked = time.monotonic()
                self.ask("POST", "/v1/query", QUESTION)
                self.queries += 1
            self.stopping.wait(0.25)

    def ask(self, method: str, path: str, body: dict[str, str] | None = None) -> None:
        unindexed_is_fine = not self.indexed  # as of when the request left
        try:
            response = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            self.failures.append(f"{self.step}: {path} {exc!r}")
            return
        unindexed = "no active index" in response.text or '"index":"failing"' in response.text
        if response.status_code != 200 and not (unindexed_is_fine and unindexed):
            self.failures.append(f"{self.step}: {path} {response.status_code} {response.text[:200]}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)
        self.client.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, dict[str, str]]]:
    """``ragops serve`` on the embedded database of a fresh data folder; yields it, its URL and its env."""
    env = cli_env(tmp_path / "state") | {"RAGOPS_READINESS_CACHE_S": "0"}  # the watcher must see activation at once
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=log,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"serve exited: {(tmp_path / 'serve.log').read_text()}"
            assert time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield proc, base, env
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
        stop_embedded_postgres(tmp_path / "state" / "pgdata")  # no server outlives the test, whatever happened


@pytest.mark.slow
def test_commands_beside_serve_leave_its_database_running(
    served: tuple[subprocess.Popen[str], str, dict[str, str]], tmp_path: Path
) -> None:
    """``ingest`` (which makes serve ready), ``keys create`` and ``usage`` beside serve; it answers throughout."""
    proc, base, env = served
    pgdata = tmp_path / "state" / "pgdata"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# PTO\n\nNew employees get 20 PTO days per year.\n")
    (docs / "office.md").write_text("# Office\n\nOffice days are Tuesday and Thursday.\n")
    watcher = Watcher(base, (tmp_path / "state" / "demo-api-key").read_text().strip())
    watcher.start()
    outputs = {}
    try:
        for step, args in {
            "ingest": ["ingest", str(docs)],
            "keys create": ["keys", "create", "--name", "beside-serve", "--collections", "*"],
            "usage": ["usage"],
        }.items():
            watcher.step = f"during and after {step}"
            result = ragops(*args, env=env, cwd=tmp_path)
            assert result.returncode == 0, f"{step}: {result.stderr}"
            watcher.indexed = True
            outputs[step] = result.stdout
        time.sleep(2)  # the watcher's view once the last command has left
    finally:
        watcher.stop()
    assert watcher.queries >= 3
    assert not watcher.failures, watcher.failures[:5]
    assert "activated index version" in outputs["ingest"]

    secret = outputs["keys create"].strip().splitlines()[-1]
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    answer = httpx.post(f"{base}/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert "20 PTO days" in answer.json()["answer"]

    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert not (pgdata / "postmaster.pid").exists(), "serve left its PostgreSQL running"
    assert not postmasters(pgdata)


def _hold(pgdata: Path, then: str) -> subprocess.Popen[str]:
    """Another process that attaches to (or starts) the server in ``pgdata``, says "ready", then ``then``."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from core.db import EmbeddedPostgres\n"
        f"server = EmbeddedPostgres(Path({str(pgdata)!r}))\n"
        "server.start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        f"{then}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.close()
    proc.wait(60)


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    """A data folder whose server, if a failed test left one, is stopped afterwards."""
    folder = tmp_path / "pgdata"
    try:
        yield folder
    finally:
        stop_embedded_postgres(folder)


def test_an_attached_process_detaches_without_stopping_the_server(pgdata: Path) -> None:
    owner = EmbeddedPostgres(pgdata)
    owner.start()
    guest = _hold(pgdata, "server.stop()")
    _finish(guest)
    assert guest.returncode == 0
    assert postmasters(pgdata), "a process that only attached stopped the server"
    owner.stop()
    assert not postmasters(pgdata)


def test_the_starter_leaves_it_running_for_others_and_the_last_one_out_stops_it(pgdata: Path) -> None:
    starter = _hold(pgdata, "server.stop()")
    guest = EmbeddedPostgres(pgdata)
    guest.start()
    _finish(starter)
    assert starter.returncode == 0
    assert postmasters(pgdata), "the starter stopped the server under a process still using it"
    guest.stop()
    assert not postmasters(pgdata)
    assert not (pgdata / "postmaster.pid").exists()


def test_killed_processes_do_not_keep_the_server_running(pgdata: Path) -> None:
    """Their pids stay in pgserver's ``.handle_pids.json``; the last live process stops the server anyway."""
    killed_starter = _hold(pgdata, "")
    killed_starter.kill()  # no clean-up runs: the postmaster and its pid file stay behind
    killed_starter.wait(30)
    killed_guest = _hold(pgdata, "")
    survivor = EmbeddedPostgres(pgdata)
    survivor.start()
    killed_guest.kill()
    killed_guest.wait(30)
    assert postmasters(pgdata)
    survivor.stop()
    assert not postmasters(pgdata)


def _shared_buffers(uri: str) -> str:
    with psycopg.connect(uri) as conn:
        row = conn.execute("SHOW shared_buffers").fetchone()
    assert row is not None
    return str(row[0])


def test_the_page_cache_is_sized_at_each_start_and_the_include_is_written_once(pgdata: Path) -> None:
    """A new data folder and an existing one both start with the size asked for, not PostgreSQL's 128 MB."""
    for size in (48, 160):  # initdb then start, then a restart of the same folder with another size
        server = EmbeddedPostgres(pgdata, shared_buffers_mb=size)
        assert _shared_buffers(server.start()) == f"{size}MB"
        server.stop()
    conf = (pgdata / "postgresql.conf").read_text()
    assert conf.count("include_if_exists = 'ragops.conf'") == 1


def test_an_attached_process_does_not_resize_a_running_server(pgdata: Path) -> None:
    """The page cache is fixed while the server runs: a second holder asking another size gets the running one."""
    owner = EmbeddedPostgres(pgdata, shared_buffers_mb=48)
    owner.start()
    guest = _hold(pgdata, "server.stop()")  # attaches with the default size
    _finish(guest)
    assert guest.returncode == 0
    assert _shared_buffers(owner.start()) == "48MB"
    owner.stop()


@pytest.mark.parametrize(
    ("total_mb", "cgroup_limit", "expected"),
    [
        (512, None, 128),
        (4096, None, 512),
        (24 * 1024, None, 2048),
        (24 * 1024, "max", 2048),
        (24 * 1024, str(2048 * 1024 * 1024), 256),
        (4096, str(2**63 - 4096), 512),
    ],
    ids=["floor", "eighth", "cap", "container-without-limit", "container-limit", "cgroup-v1-unlimited"],
)
def test_the_default_page_cache_is_an_eighth_of_the_memory_within_bounds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, total_mb: int, cgroup_limit: str | None, expected: int
) -> None:
    """The machine's memory, or the container's limit when it is lower (psutil sees the host's)."""

    class Memory:
        total = total_mb * 1024 * 1024

    limit_file = tmp_path / "memory.max"
    if cgroup_limit is not None:
        limit_file.write_text(cgroup_limit + "\n")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    monkeypatch.setattr(db, "CGROUP_MEMORY_LIMITS", (limit_file,))
    assert default_shared_buffers_mb() == expected
