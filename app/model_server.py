"""``ragops llm serve``: vLLM's OpenAI-compatible server, started with a RAG configuration's model settings.

For GPU hosts without Docker (``pip install 'ragops[gpu]'``). The served model name is the
configuration's ``generation.model``, so the API and the model server read the same file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.config import LoadedConfig, load_config
from core.errors import ConfigError, VllmMissing
from core.settings import get_settings

VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"

llm_app = typer.Typer(help="Run the language model server (vLLM) from a configuration.", no_args_is_help=True)


def vllm_command(config: LoadedConfig, python: str, host: str, port: int) -> list[str]:
    """The argv that starts vLLM for ``config``'s ``generation.server`` section."""
    generation = config.config.generation
    server = generation.server
    if not server.model:
        raise ConfigError(f"{config.path}: generation.server.model is not set: name the model folder or hub id")
    command = [python, "-m", VLLM_ENTRYPOINT, "--model", server.model, "--served-model-name", generation.model]
    command += ["--host", host, "--port", str(port), "--dtype", server.dtype]
    if server.max_model_len is not None:
        command += ["--max-model-len", str(server.max_model_len)]
    if server.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(server.gpu_memory_utilization)]
    # Cached prompt tokens are reported in usage (and priced as cached) only with this flag.
    command += ["--enable-prefix-caching" if server.prefix_caching else "--no-enable-prefix-caching"]
    command += ["--enable-prompt-tokens-details", *server.extra_args]
    return command


def require_vllm(python: str) -> None:
    """Fail with a clear message unless ``python`` can import vLLM."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False).returncode == 0
    except OSError as exc:
        raise VllmMissing(f"cannot run {python}: {exc}") from None
    if not found:
        raise VllmMissing(
            f"vLLM is not installed for {python}: `pip install 'ragops[gpu]'` on a GPU host "
            "(or pass --python with the interpreter of a venv that has vLLM)"
        )


@llm_app.command("serve")
def serve(
    config: Annotated[str | None, typer.Option(help="Configuration name (default: RAGOPS_CONFIG).")] = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; RAGOPS_VLLM_URL should point at http://HOST:PORT/v1.")] = 8001,
    python: Annotated[
        Path | None, typer.Option(help="Interpreter that has vLLM (default: this one).", dir_okay=False)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command instead of running it.")] = False,
) -> None:
    """Start vLLM's OpenAI-compatible server with the configuration's model settings."""
    settings = get_settings()
    loaded = load_config(config or settings.config, settings.configs_dir)
    interpreter = str(python) if python else sys.executable
    command = vllm_command(loaded, interpreter, host, port)
    if dry_run:
        print(shlex.join(command))
        return
    require_vllm(interpreter)
    sys.stdout.flush()
    os.execv(interpreter, command)  # vLLM takes over the process: signals and exit code are its own
