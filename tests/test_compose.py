"""compose.yaml describes a topology that matches the code (no Docker engine
here, so its structure is checked and the same topology runs as processes in
test_multiprocess.py)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import make_url

from tenantry.db_roles import API, MIGRATOR, ROLES, WORKER
from tests.stack import REPO_ROOT

# Every variable is read in one place.
SETTINGS_SOURCES = [REPO_ROOT / "services/tenantry/settings.py"]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    return data


def _console_scripts() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return set(project["project"]["scripts"])


def _known_variables() -> set[str]:
    return {name for path in SETTINGS_SOURCES for name in re.findall(r"TENANTRY_[A-Z_]+", path.read_text())}


def test_compose_has_the_whole_topology() -> None:
    services = _compose()["services"]
    assert {"postgres", "temporal", "migrate", "tenant-api", "provisioner-worker"} <= set(services)
    assert services["temporal"]["image"].startswith("temporalio/")


def test_compose_commands_are_real_console_scripts_and_dockerfiles_exist() -> None:
    scripts = _console_scripts()
    services = _compose()["services"]
    assert services["migrate"]["entrypoint"] == ["tenantry-migrate"]
    for name in ("migrate", "tenant-api", "provisioner-worker"):
        dockerfile = REPO_ROOT / services[name]["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile.read_text(), re.MULTILINE)
        assert entrypoint is not None and entrypoint.group(1) in scripts
    assert "tenantry-migrate" in scripts


def test_compose_environment_matches_the_settings_module() -> None:
    known = _known_variables()
    for name, service in _compose()["services"].items():
        if name in ("postgres", "temporal"):
            continue
        variables = set(service["environment"])
        assert variables <= known, f"{name}: unknown {variables - known}"
        assert {"TENANTRY_DATABASE_URL", "TENANTRY_TEMPORAL_ADDRESS"} <= variables


def test_compose_ordering_health_and_scaling() -> None:
    services = _compose()["services"]
    for name in ("postgres", "temporal"):
        assert "healthcheck" in services[name]
    for name in ("tenant-api", "provisioner-worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["temporal"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["tenant-api"]
    # Plaintext (TENANTRY_PLAINTEXT_BEHIND_PROXY) is published on the host's loopback only.
    assert "127.0.0.1:50051:50051" in api["ports"]
    assert api["environment"]["TENANTRY_PLAINTEXT_BEHIND_PROXY"] == "true"
    assert api["environment"]["TENANTRY_GRPC_ADDRESS"].endswith(":50051")
    worker = services["provisioner-worker"]
    # `--scale provisioner-worker=3` needs no fixed name and no host ports.
    assert "container_name" not in worker and "ports" not in worker


def test_dockerfiles_are_multi_stage_non_root_with_healthcheck() -> None:
    for service in ("tenant_api", "provisioner_worker"):
        text = (REPO_ROOT / "services" / service / "Dockerfile").read_text()
        assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
        assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
        user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
        assert user and user[-1] not in ("root", "0")
        assert "HEALTHCHECK" in text
        assert "--no-cache-dir" in text


def test_dockerignore_keeps_local_state_out_of_images() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".tenantry", ".git"} <= set(ignored)
    assert Path(REPO_ROOT / "services/tenant_api/healthcheck.py").is_file()


def test_compose_runs_each_process_as_its_own_database_role() -> None:
    services = _compose()["services"]

    def user(name: str) -> str | None:
        return make_url(services[name]["environment"]["TENANTRY_DATABASE_URL"]).username

    assert (user("migrate"), user("tenant-api"), user("provisioner-worker")) == (MIGRATOR, API, WORKER)
    # Only `tenantry-migrate roles` connects as the superuser, and before the migrations.
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    assert user("roles") == superuser
    assert services["roles"]["entrypoint"] == ["tenantry-migrate", "roles"]
    assert services["migrate"]["depends_on"]["roles"]["condition"] == "service_completed_successfully"
    # Temporal has a role and databases of its own, made with the roles' logins.
    temporal = services["temporal"]["environment"]
    assert temporal["POSTGRES_USER"] not in (superuser, *ROLES)
    init = (REPO_ROOT / "compose/postgres-init.sh").read_text()
    for role in (*ROLES, temporal["POSTGRES_USER"]):
        assert f"CREATE ROLE {role} LOGIN" in init
    for database in (temporal["DBNAME"], temporal["VISIBILITY_DBNAME"]):
        assert f"CREATE DATABASE {database} OWNER {temporal['POSTGRES_USER']}" in init
    mounted = [volume.split(":")[0] for volume in services["postgres"]["volumes"]]
    assert "./compose/postgres-init.sh" in mounted
