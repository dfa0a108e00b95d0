"""`tenantry-dev --shards N`: what it would start and print, and the flags it
refuses, without starting any server (a full run binds tenantry-dev's fixed
Temporal ports, so it is `make dev`'s to show)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tenantry.settings import DevSettings
from tenantry_dev.embedded import BIN_DIR
from tenantry_dev.stack import DevStack, _banner


def _settings() -> DevSettings:
    return DevSettings(database_url=None, temporal_address=None, grpc_address="127.0.0.1:50051")


def test_shards_are_default_then_b_c(tmp_path: Path) -> None:
    assert DevStack(tmp_path, _settings()).shard_names == ["default"]
    assert DevStack(tmp_path, _settings(), shards=2).shard_names == ["default", "b"]
    assert DevStack(tmp_path, _settings(), shards=3).shard_names == ["default", "b", "c"]


def test_the_banner_names_the_shards_and_shows_placement_and_a_move() -> None:
    env = {
        "TENANTRY_GRPC_ADDRESS": "127.0.0.1:50051",
        "TENANTRY_TEMPORAL_ADDRESS": "127.0.0.1:7233",
        "TENANTRY_DATABASE_URL": "postgresql+asyncpg://postgres@/postgres?host=/a",
        "TENANTRY_SHARDS": json.dumps(
            {"default": "postgresql+asyncpg://postgres@/postgres?host=/a", "b": "postgresql+asyncpg://x?host=/b"}
        ),
    }
    banner = _banner(env, "token", None)
    assert "Shards       default, b" in banner
    assert "b: postgresql+asyncpg://x?host=/b" in banner
    assert '"shard":"b"' in banner and "TenantService/MoveTenant" in banner
    single = _banner({**env, "TENANTRY_SHARDS": ""}, "token", None)
    assert "Shards" not in single and "MoveTenant" not in single


def _run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return subprocess.run(
        [str(BIN_DIR / "tenantry-dev"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_shards_with_tenantry_shards_set_is_a_configuration_error() -> None:
    result = _run("--shards", "2", TENANTRY_SHARDS='{"b": "postgresql+asyncpg://u:p@h/db"}')
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TENANTRY_SHARDS" in lines[0], result.stderr


def test_an_impossible_shard_count_is_refused_by_the_parser() -> None:
    for count in ("0", "99", "two"):
        result = _run("--shards", count)
        assert result.returncode == 2, result.stderr
        assert "--shards" in result.stderr and "Traceback" not in result.stderr
