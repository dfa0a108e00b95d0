"""The README's grpcurl examples, run verbatim (placeholders filled in) with the
real grpcurl binary against a running tenant-api process."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from provisioner_worker.worker import build_worker
from tenantry_dev.embedded import tool_path
from tests.stack import ADMIN_TOKEN, REPO_ROOT, service_env, spawn_api, stopping, wait_serving

README_ADDRESS = "127.0.0.1:50051"


def readme_grpcurl_commands() -> list[list[str]]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Try it with grpcurl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip().startswith("grpcurl")]


def run_grpcurl(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool_path("grpcurl"), *args[1:]], capture_output=True, text=True, timeout=30, check=False)


async def test_readme_grpcurl_examples_work(database_url: str, engine: AsyncEngine, temporal_client: Client) -> None:
    commands = readme_grpcurl_commands()
    methods = [command[-1] for command in commands]
    assert any(m.endswith("RegisterTenant") for m in methods) and any(m.endswith("ListProjects") for m in methods)

    queue = f"grpcurl-{uuid.uuid4().hex[:8]}"
    api = spawn_api(service_env(database_url, temporal_client.service_client.config.target_host, queue))
    slug = f"acme-{uuid.uuid4().hex[:8]}"
    tenant_id = ""
    outputs: dict[str, Any] = {}
    with stopping(api):
        await wait_serving(api)
        async with build_worker(temporal_client, engine, queue):
            for command in commands:
                args = [
                    a.replace(README_ADDRESS, api.address)
                    .replace('"acme"', f'"{slug}"')
                    .replace("<tenant id>", tenant_id)
                    .replace("$TOKEN", ADMIN_TOKEN)
                    for a in command
                ]
                result = await asyncio.to_thread(run_grpcurl, args)
                assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr}"
                method = args[-1]
                if method.endswith("/RegisterTenant"):
                    tenant_id = json.loads(result.stdout)["tenant"]["id"]
                outputs[method.rsplit("/", 1)[-1] if "/" in method else method] = result.stdout

    assert "tenantry.v1.TenantService" in outputs["list"] and "grpc.health.v1.Health" in outputs["list"]
    assert "rpc RegisterTenant" in outputs["tenantry.v1.TenantService"]
    assert json.loads(outputs["GetTenant"])["tenant"]["slug"] == slug
    waited = json.loads(outputs["WaitOperation"])["operation"]
    assert waited["done"] and waited["state"] == "OPERATION_STATE_SUCCEEDED"
    assert [p["name"] for p in json.loads(outputs["ListProjects"])["projects"]] == ["apollo"]
    assert json.loads(outputs["DeleteTenant"])["tenant"]["state"] == "TENANT_STATE_DELETING"
