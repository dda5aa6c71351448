"""``ragops llm serve``: the vLLM command is built from the configuration, and it really starts vLLM."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.utils import vllm_server
from tests.utils.tiny_llama import write_tiny_llama
from tests.utils.vllm_server import BASE_ENV, free_port, require_vllm_python

SERVER_SECTION = """generation:
  model: {name}
  server:
    model: {model}
    max_model_len: 512
    dtype: float32
    prefix_caching: {caching}
    extra_args: ["--enforce-eager"]
"""


def write_configs(folder: Path, model: str, name: str = "tiny-served", caching: str = "true") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(SERVER_SECTION.format(name=name, model=model, caching=caching))
    shutil.copy(REPO / "configs" / "default.yaml", folder / "default.yaml")
    return folder


def llm_serve(configs: Path, *args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGOPS_CONFIGS_DIR": str(configs)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "llm", "serve", *args], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("caching", "flag"), [("true", "--enable-prefix-caching"), ("false", "--no-enable-prefix-caching")]
)
def test_dry_run_prints_the_vllm_command_from_the_configuration(tmp_path: Path, caching: str, flag: str) -> None:
    configs = write_configs(tmp_path / "configs", "/models/tiny", caching=caching)
    result = llm_serve(configs, "--config", "tiny", "--port", "8123", "--python", "/opt/py/bin/python", "--dry-run")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[:3] == ["/opt/py/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    options = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert options["--model"] == "/models/tiny"
    assert options["--served-model-name"] == "tiny-served"  # generation.model: what the app asks for
    assert options["--max-model-len"] == "512" and options["--dtype"] == "float32" and options["--port"] == "8123"
    assert flag in argv and argv[-1] == "--enforce-eager"


def test_a_configuration_without_a_model_is_refused(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(REPO / "configs" / "default.yaml", configs / "default.yaml")
    result = llm_serve(configs, "--dry-run")
    assert result.returncode == 1
    assert "generation.server.model is not set" in result.stderr


def test_missing_vllm_is_a_clear_error(tmp_path: Path) -> None:
    """This venv (the app's) has no vLLM: the command says how to get it instead of a traceback."""
    configs = write_configs(tmp_path / "configs", "/models/tiny")
    result = llm_serve(configs, "--config", "tiny")
    assert result.returncode == 1
    assert "vLLM is not installed" in result.stderr and "ragops[gpu]" in result.stderr
    assert "Traceback" not in result.stderr


def get_json(url: str, timeout: float) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return dict(json.loads(response.read()))


def post_json(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The vLLM venv's interpreter (module scope: found before per-test settings isolation drops RAGOPS_*)."""
    return require_vllm_python()


def test_llm_serve_starts_a_real_vllm_that_answers(tmp_path: Path, vllm_python: Path) -> None:
    """Integration tier: the CPU build of vLLM (scripts/vllm_venv.sh) serving the tiny random Llama."""
    python = vllm_python
    model = write_tiny_llama(tmp_path / "tiny")
    configs = write_configs(tmp_path / "configs", str(model))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(BASE_ENV, RAGOPS_CONFIGS_DIR=str(configs))
    log = (tmp_path / "vllm.log").open("wb")
    command = ["llm", "serve", "--config", "tiny", "--port", str(port), "--python", str(python)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *command],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        models = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                models = get_json(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        assert models is not None, (tmp_path / "vllm.log").read_text()[-3000:]
        assert [m["id"] for m in models["data"]] == ["tiny-served"]  # type: ignore[index, union-attr]
        # Listing models proves only that the API server is up: ask the engine for tokens.
        body = {"model": "tiny-served", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
        completion = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", body, timeout=120)
        choice = completion["choices"][0]  # type: ignore[index]
        assert choice["finish_reason"] in ("length", "stop"), completion
        usage = completion["usage"]  # type: ignore[index]
        assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 3, usage  # type: ignore[index]
        # The flag ragops' pricing depends on: cached prompt tokens are reported only with it.
        assert "cached_tokens" in (usage["prompt_tokens_details"] or {}), usage  # type: ignore[index]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the engine process, if it outlived the API server
        log.close()


def test_a_required_vllm_tier_fails_rather_than_skips_inside_a_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Called from a test (after the settings isolation dropped RAGOPS_*), the requirement still holds."""
    monkeypatch.setattr(vllm_server, "STARTUP_ENV", {"RAGOPS_REQUIRE_VLLM": "1"})
    monkeypatch.setattr(vllm_server, "find_vllm_python", lambda: None)
    assert "RAGOPS_REQUIRE_VLLM" not in os.environ  # what the autouse isolation leaves a test
    try:
        with pytest.raises(pytest.fail.Exception, match="vLLM venv missing"):
            require_vllm_python()
    except pytest.skip.Exception:
        pytest.fail("a required vLLM tier skipped silently")
