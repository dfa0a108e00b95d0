"""The stack under test, on embedded defaults, in a fresh temporary directory.

Embedded PostgreSQL (its own data directory, never `.tenantry/`), a Temporal
dev server on a free port, the control-plane migrations, then `tenant-api` and
`provisioner-worker` as separate OS processes (`python -m ...`), a second
`tenant-api` that keeps deleted tenants for a day (UndeleteTenant), plus two
helper processes for the floors: a worker of no-op workflows and a ProjectService
server without interceptors. A second embedded PostgreSQL is the shard `b`
(TENANTRY_SHARDS of the API and the worker), with a ProjectService server
without interceptors of its own against b (the reads on b's floor). `stop()` leaves no process behind; it is
idempotent and also runs at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.stats import progress
from tenantry_dev.embedded import (
    BIN_DIR,
    DatabaseUrls,
    free_port,
    prepare_database,
    prepare_shard,
    spawn_child,
    start_embedded_postgres,
    temporal_dev_server_command,
    temporal_is_healthy,
    wait_grpc_serving,
)
from tenantry_dev.embedded import ChildProcess as Service
from tenantry_dev.tokens import DEV_ISSUER, SigningKey, ensure_page_token_key, ensure_signing_key, mint_token

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where `make bench` leaves its results (latest.*, move.*).
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
# tenant-api-retained's deletion retention: longer than any run.
RETAINED_API_RETENTION_SECONDS = 86400
# The second shard's name (TENANTRY_SHARDS); the scenarios register with the
# hint `default`, so only the tenants made for shard b's rows live there.
SHARD_B = "b"


@dataclass
class BenchStack:
    workdir: Path
    database_url: str = ""
    temporal_address: str = ""
    task_queue: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    noop_task_queue: str = field(default_factory=lambda: f"bench-noop-{uuid.uuid4().hex[:8]}")
    services: dict[str, Service] = field(default_factory=dict)
    postgres: Any = None
    stopped: bool = False
    # Each role's URL (prepare_database): the fleet scenario seeds as the
    # worker (it owns tenant schemas) and rolls out as the migrator.
    urls: DatabaseUrls | None = None
    # Shard b: its own embedded server, prepared as a shard.
    shard_b_postgres: Any = None
    shard_b_urls: DatabaseUrls | None = None

    @classmethod
    def create(cls) -> BenchStack:
        workdir = Path(tempfile.mkdtemp(prefix="tenantry-bench-"))
        # Embedded PostgreSQL runs as a dedicated system user under root.
        workdir.chmod(0o755)
        stack = cls(workdir=workdir)
        atexit.register(stack.stop)
        return stack

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        self._start_postgres()
        self._start_temporal()
        await self._wait_for_temporal()
        progress("creating database roles, applying control-plane migrations")
        # As deployed: the worker and the API each as its own role; the
        # benchmark's own connections and floors stay the superuser's.
        password = secrets.token_hex(16)
        urls = await asyncio.to_thread(prepare_database, self.database_url, password)
        self.urls = urls
        shard_b_url = self._start_shard_b()
        b = self.shard_b_urls = await asyncio.to_thread(prepare_shard, shard_b_url, password)
        env = self.service_env()
        self.spawn(
            "provisioner-worker",
            ["-m", "provisioner_worker"],
            {**env, "TENANTRY_DATABASE_URL": urls.worker, "TENANTRY_SHARDS": self._shards(urls.worker, b.worker)},
        )
        api_address, bare_address, bare_b_address = self._address(), self._address(), self._address()
        api_env = {
            **env,
            "TENANTRY_GRPC_ADDRESS": api_address,
            "TENANTRY_DATABASE_URL": urls.api,
            "TENANTRY_SHARDS": self._shards(urls.api, b.api),
        }
        api = self.spawn("tenant-api", ["-m", "tenant_api"], api_env, api_address)
        # The same API keeping deleted tenants' data for a day, so that an
        # UndeleteTenant finds its tenant still retained (the lifecycle
        # scenario); tenant-api itself purges at once (the deletion scenario).
        retained_address = self._address()
        retained = self.spawn(
            "tenant-api-retained",
            ["-m", "tenant_api"],
            {
                **api_env,
                "TENANTRY_GRPC_ADDRESS": retained_address,
                "TENANTRY_DELETION_RETENTION_SECONDS": str(RETAINED_API_RETENTION_SECONDS),
            },
            retained_address,
        )
        # Ready once it has run a workflow: see the warmup.
        self.spawn("noop-worker", ["-m", "bench.noop_worker"], {**env, "BENCH_TASK_QUEUE": self.noop_task_queue})
        bare = self.spawn(
            "bare-api", ["-m", "bench.bare_api"], {**env, "BENCH_GRPC_ADDRESS": bare_address}, bare_address
        )
        # The floor for reads on b: the same bare server, its database b (as b's superuser, like bare-api's).
        bare_b = self.spawn(
            "bare-api-b",
            ["-m", "bench.bare_api"],
            {**env, "BENCH_GRPC_ADDRESS": bare_b_address, "TENANTRY_DATABASE_URL": b.admin},
            bare_b_address,
        )
        await asyncio.gather(
            self.wait_serving(api), self.wait_serving(retained), self.wait_serving(bare), self.wait_serving(bare_b)
        )
        progress(f"stack up in {time.monotonic() - started:.1f}s (workdir {self.workdir})")

    def _address(self) -> str:
        return f"127.0.0.1:{free_port()}"

    def _start_postgres(self) -> None:
        # embedded-postgres keeps its lock file (and, for long paths, its
        # socket) in the runtime dir, which must be private; it recreates the
        # lock file at exit, so not inside the work dir that stop() removes.
        runtime = Path(tempfile.gettempdir()) / f"tenantry-bench-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        progress(f"starting embedded PostgreSQL in {self.workdir / 'pgdata'}")
        self.database_url, self.postgres = start_embedded_postgres(self.workdir / "pgdata")

    def _start_shard_b(self) -> str:
        progress(f"starting shard {SHARD_B}: embedded PostgreSQL in {self.workdir / 'pgdata-b'}")
        url, self.shard_b_postgres = start_embedded_postgres(self.workdir / "pgdata-b")
        return url

    @staticmethod
    def _shards(default_url: str, b_url: str) -> str:
        return json.dumps({"default": default_url, SHARD_B: b_url})

    def _start_temporal(self) -> None:
        port = free_port()
        self.temporal_address = f"127.0.0.1:{port}"
        progress(f"starting Temporal dev server on {self.temporal_address}")
        command = temporal_dev_server_command("127.0.0.1", port)
        self._popen("temporal", command, dict(os.environ))

    async def _wait_for_temporal(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not await temporal_is_healthy(self.temporal_address):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"Temporal at {self.temporal_address} not ready in {STARTUP_TIMEOUT_SECONDS}s")
            await asyncio.sleep(0.3)

    def signing_key(self) -> SigningKey:
        """The key the API trusts (made on first use) and the benchmark's clients sign with."""
        return ensure_signing_key(self.workdir / "auth")

    def admin_token(self) -> str:
        return mint_token(self.signing_key(), ttl=timedelta(hours=6), subject="bench")

    def service_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTRY_", "BENCH_"))}
        env.update(
            {
                "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '')}",
                "TENANTRY_DATABASE_URL": self.database_url,
                "TENANTRY_TEMPORAL_ADDRESS": self.temporal_address,
                "TENANTRY_TASK_QUEUE": self.task_queue,
                "TENANTRY_METRICS_ADDRESS": "off",
                "TENANTRY_SDK_METRICS_ADDRESS": "off",
                "TENANTRY_RECONCILE_INTERVAL_SECONDS": "3600",
                # The deletion scenario measures the purge: keep no data.
                "TENANTRY_DELETION_RETENTION_SECONDS": "0.001",
                "TENANTRY_SHUTDOWN_GRACE_SECONDS": "3",
                "TENANTRY_WORKER_LIVENESS_FILE": str(self.workdir / "worker.alive"),
                "TENANTRY_AUTH_ISSUER": DEV_ISSUER,
                "TENANTRY_AUTH_JWKS_FILE": str(self.signing_key().jwks_file),
                "TENANTRY_PAGE_TOKEN_KEY": ensure_page_token_key(self.workdir / "auth"),
            }
        )
        return env

    def _popen(self, name: str, command: list[str], env: dict[str, str]) -> Service:
        service = spawn_child(name, command, env, self.workdir / f"{name}.log", cwd=REPO_ROOT)
        self.services[name] = service
        return service

    def spawn(self, name: str, args: list[str], env: dict[str, str], address: str = "") -> Service:
        service = self._popen(name, [sys.executable, *args], env)
        service.address = address
        return service

    async def wait_serving(self, service: Service) -> None:
        await wait_grpc_serving(service.address, service.name, STARTUP_TIMEOUT_SECONDS, self.check_alive)

    def check_alive(self) -> None:
        for service in self.services.values():
            service.check_alive()

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """SIGSTOP a service for the block (it resumes where it was)."""
        pid = self.services[name].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def pids(self) -> dict[str, int]:
        return {name: service.pid for name, service in self.services.items()}

    # -- stop ----------------------------------------------------------------

    def stop(self, keep_workdir: bool = False) -> None:
        if self.stopped:
            return
        self.stopped = True
        for service in reversed(list(self.services.values())):
            if service.alive():
                with contextlib.suppress(ProcessLookupError):
                    # A paused service would not act on SIGTERM.
                    service.process.send_signal(signal.SIGCONT)
                    service.process.terminate()
        for service in reversed(list(self.services.values())):
            try:
                service.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"bench: {service.name} did not stop in time, killing it", file=sys.stderr)
                service.kill_group()
                service.process.wait(10)
        if self.postgres is not None:
            # `pg_ctl -w stop` (fast shutdown); kills the postmaster if that fails.
            self.postgres.cleanup()
            self.postgres = None
        if self.shard_b_postgres is not None:
            self.shard_b_postgres.cleanup()
            self.shard_b_postgres = None
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
