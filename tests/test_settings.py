"""Configuration from the environment: defaults, every malformed variable named in
one clear line, and the real console scripts exiting 2 without a traceback."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from provisioner_worker.worker import MAX_CONCURRENT_ACTIVITIES
from tenantry.settings import (
    DEFAULT_API_DB_MAX_OVERFLOW,
    DEFAULT_API_METRICS_ADDRESS,
    DEFAULT_API_STATEMENT_TIMEOUT_SECONDS,
    DEFAULT_AUTH_AUDIENCE,
    DEFAULT_DB_POOL_SIZE,
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
    DEFAULT_LIVENESS_FILE,
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_MIGRATIONS_DIR,
    DEFAULT_NAMESPACE,
    DEFAULT_RECONCILE_INTERVAL_SECONDS,
    DEFAULT_SDK_METRICS_ADDRESS,
    DEFAULT_SHUTDOWN_GRACE_SECONDS,
    DEFAULT_TASK_QUEUE,
    DEFAULT_WORKER_DB_MAX_OVERFLOW,
    DEFAULT_WORKER_METRICS_ADDRESS,
    DEFAULT_WORKER_STATEMENT_TIMEOUT_SECONDS,
    ApiSettings,
    AuthSettings,
    DbTimeouts,
    DevSettings,
    HealthcheckSettings,
    MigrateSettings,
    SettingsError,
    TemporalTlsSettings,
    TlsSettings,
    WorkerSettings,
    database_url_from,
    grpc_address_from,
    liveness_file_from,
    load_or_exit,
    migrations_dir_from,
)
from tenantry_dev.embedded import BIN_DIR
from tenantry_dev.tokens import PAGE_TOKEN_KEY_FILE_NAME, ensure_page_token_key
from tests.stack import REPO_ROOT

DATABASE_URL = "postgresql+asyncpg://tenantry:secret@127.0.0.1:1/tenantry"
TEMPORAL_ADDRESS = "127.0.0.1:1"
JWKS_FILE = Path(tempfile.mkdtemp(prefix="tenantry-settings-")) / "jwks.json"
JWKS_FILE.write_text('{"keys": []}')
# Any PEM block will do: the settings check the files are readable PEM, the TLS
# handshake checks what is in them (tests/test_temporal_tls.py).
PEM_FILE = JWKS_FILE.with_name("temporal.pem")
PEM_FILE.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
PAGE_TOKEN_KEY = bytes(range(32))
REQUIRED = {
    "TENANTRY_DATABASE_URL": DATABASE_URL,
    "TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS,
    "TENANTRY_AUTH_ISSUER": "https://idp.example",
    "TENANTRY_AUTH_JWKS_FILE": str(JWKS_FILE),
    "TENANTRY_PAGE_TOKEN_KEY": PAGE_TOKEN_KEY.hex(),
}
AUTH_DEFAULTS = AuthSettings(
    issuer="https://idp.example", audience=DEFAULT_AUTH_AUDIENCE, jwks_file=JWKS_FILE, jwks_url=None
)
COMMON_DEFAULTS: dict[str, Any] = {
    "database_url": DATABASE_URL,
    "temporal_address": TEMPORAL_ADDRESS,
    "temporal_namespace": DEFAULT_NAMESPACE,
    "task_queue": DEFAULT_TASK_QUEUE,
    "shutdown_grace_seconds": DEFAULT_SHUTDOWN_GRACE_SECONDS,
    "shards": {"default": DATABASE_URL},
}


def test_defaults() -> None:
    assert ApiSettings.from_env(REQUIRED) == ApiSettings(
        **COMMON_DEFAULTS,
        metrics_address=DEFAULT_API_METRICS_ADDRESS,
        db_pool_size=DEFAULT_DB_POOL_SIZE,
        db_max_overflow=DEFAULT_API_DB_MAX_OVERFLOW,
        grpc_address=DEFAULT_GRPC_ADDRESS,
        auth=AUTH_DEFAULTS,
        page_token_key=PAGE_TOKEN_KEY,
    )
    assert WorkerSettings.from_env(REQUIRED) == WorkerSettings(
        **COMMON_DEFAULTS,
        metrics_address=DEFAULT_WORKER_METRICS_ADDRESS,
        db_pool_size=DEFAULT_DB_POOL_SIZE,
        db_max_overflow=DEFAULT_WORKER_DB_MAX_OVERFLOW,
        reconcile_interval_seconds=DEFAULT_RECONCILE_INTERVAL_SECONDS,
        sdk_metrics_address=DEFAULT_SDK_METRICS_ADDRESS,
        liveness_file=DEFAULT_LIVENESS_FILE,
        migrations_dir=DEFAULT_MIGRATIONS_DIR,
        # The worker's statements (DDL) get longer than the API's, within its 60 s step.
        db_timeouts=DbTimeouts(statement_seconds=DEFAULT_WORKER_STATEMENT_TIMEOUT_SECONDS),
    )
    assert ApiSettings.from_env(REQUIRED).db_timeouts == DbTimeouts(
        statement_seconds=DEFAULT_API_STATEMENT_TIMEOUT_SECONDS,
        lock_seconds=DEFAULT_LOCK_TIMEOUT_SECONDS,
        idle_in_transaction_seconds=DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
    )
    assert MigrateSettings.from_env({"TENANTRY_DATABASE_URL": DATABASE_URL}) == MigrateSettings(
        database_url=DATABASE_URL, migrations_dir=DEFAULT_MIGRATIONS_DIR, shards={"default": DATABASE_URL}
    )
    assert DevSettings.from_env({}) == DevSettings(
        database_url=None, temporal_address=None, grpc_address=DEFAULT_GRPC_ADDRESS
    )
    # The README's table.
    assert (DEFAULT_GRPC_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE) == (
        "127.0.0.1:50051",
        "default",
        "tenant-provisioning",
    )
    assert (DEFAULT_RECONCILE_INTERVAL_SECONDS, DEFAULT_SHUTDOWN_GRACE_SECONDS) == (30, 10)
    assert (
        DEFAULT_API_STATEMENT_TIMEOUT_SECONDS,
        DEFAULT_WORKER_STATEMENT_TIMEOUT_SECONDS,
        DEFAULT_LOCK_TIMEOUT_SECONDS,
        DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
    ) == (30, 50, 5, 30)
    assert (DEFAULT_API_METRICS_ADDRESS, DEFAULT_WORKER_METRICS_ADDRESS, DEFAULT_SDK_METRICS_ADDRESS) == (
        "127.0.0.1:9464",
        "127.0.0.1:9466",
        "127.0.0.1:9465",
    )
    assert str(DEFAULT_LIVENESS_FILE) == "/tmp/provisioner-worker.alive"
    assert (DEFAULT_DB_POOL_SIZE, DEFAULT_API_DB_MAX_OVERFLOW, DEFAULT_WORKER_DB_MAX_OVERFLOW) == (10, 10, 20)
    # The worker's overflow covers one connection per concurrent activity.
    assert DEFAULT_WORKER_DB_MAX_OVERFLOW == MAX_CONCURRENT_ACTIVITIES
    assert DEFAULT_MIGRATIONS_DIR == REPO_ROOT / "migrations"


def test_blank_optional_variables_mean_default() -> None:
    blank = {
        "TENANTRY_GRPC_ADDRESS": "",
        "TENANTRY_TEMPORAL_NAMESPACE": "  ",
        "TENANTRY_TASK_QUEUE": "",
        "TENANTRY_RECONCILE_INTERVAL_SECONDS": " ",
        "TENANTRY_SHUTDOWN_GRACE_SECONDS": "",
        "TENANTRY_DB_STATEMENT_TIMEOUT_SECONDS": " ",
        "TENANTRY_DB_LOCK_TIMEOUT_SECONDS": "",
        "TENANTRY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": " ",
        "TENANTRY_METRICS_ADDRESS": " ",
        "TENANTRY_SDK_METRICS_ADDRESS": "",
        "TENANTRY_WORKER_LIVENESS_FILE": " ",
        "TENANTRY_MIGRATIONS_DIR": "",
        "TENANTRY_LISTEN_DATABASE_URL": " ",
        "TENANTRY_DB_POOL_SIZE": " ",
        "TENANTRY_DB_MAX_OVERFLOW": "",
    }
    assert ApiSettings.from_env({**REQUIRED, **blank}) == ApiSettings.from_env(REQUIRED)
    assert WorkerSettings.from_env({**REQUIRED, **blank}) == WorkerSettings.from_env(REQUIRED)
    assert MigrateSettings.from_env({**REQUIRED, **blank}) == MigrateSettings.from_env(REQUIRED)
    assert DevSettings.from_env({**blank, "TENANTRY_DATABASE_URL": " ", "TENANTRY_TEMPORAL_ADDRESS": ""}) == (
        DevSettings.from_env({})
    )


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "TENANTRY_GRPC_ADDRESS": "0.0.0.0:6000",
        "TENANTRY_DATABASE_URL": " postgresql+asyncpg://postgres@/postgres?host=/tmp/pg ",
        "TENANTRY_TEMPORAL_ADDRESS": "temporal.internal:7233",
        "TENANTRY_TEMPORAL_NAMESPACE": "tenantry-prod",
        "TENANTRY_TASK_QUEUE": "tenant-provisioning-eu",
        "TENANTRY_RECONCILE_INTERVAL_SECONDS": "2.5",
        "TENANTRY_SHUTDOWN_GRACE_SECONDS": "0.5",
        "TENANTRY_DB_STATEMENT_TIMEOUT_SECONDS": "12",
        "TENANTRY_DB_LOCK_TIMEOUT_SECONDS": " 0.25 ",
        "TENANTRY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "90",
        "TENANTRY_METRICS_ADDRESS": "0.0.0.0:9999",
        "TENANTRY_SDK_METRICS_ADDRESS": "[::1]:9998",
        "TENANTRY_WORKER_LIVENESS_FILE": str(tmp_path / "alive"),
        "TENANTRY_MIGRATIONS_DIR": str(tmp_path),
        "TENANTRY_AUTH_ISSUER": "https://login.example.com/",
        "TENANTRY_AUTH_AUDIENCE": "tenantry-prod",
        "TENANTRY_AUTH_JWKS_URL": "https://login.example.com/.well-known/jwks.json",
        "TENANTRY_TLS_CERT_FILE": "/tls/cert.pem",
        "TENANTRY_TLS_KEY_FILE": "/tls/key.pem",
        "TENANTRY_TLS_CLIENT_CA_FILE": "/tls/clients.pem",
        "TENANTRY_PLAINTEXT_BEHIND_PROXY": "false",
        "TENANTRY_TEMPORAL_TLS_CA_FILE": str(PEM_FILE),
        "TENANTRY_TEMPORAL_TLS_CERT_FILE": f" {PEM_FILE} ",
        "TENANTRY_TEMPORAL_TLS_KEY_FILE": str(PEM_FILE),
        "TENANTRY_TEMPORAL_API_KEY": " tk-cloud-key ",
        "TENANTRY_PAGE_TOKEN_KEY": base64.b64encode(bytes(range(40))).decode(),
        "TENANTRY_DB_POOL_SIZE": " 4 ",
        "TENANTRY_LISTEN_DATABASE_URL": "postgresql+asyncpg://postgres@db-direct/postgres",
        "TENANTRY_DB_MAX_OVERFLOW": "0",
        "TENANTRY_SHARDS": '{"eu-2": "postgresql+asyncpg://postgres@eu-2/tenants"}',
    }
    common: dict[str, Any] = {
        "database_url": "postgresql+asyncpg://postgres@/postgres?host=/tmp/pg",
        "temporal_address": "temporal.internal:7233",
        "temporal_namespace": "tenantry-prod",
        "task_queue": "tenant-provisioning-eu",
        "shutdown_grace_seconds": 0.5,
        "metrics_address": "0.0.0.0:9999",
        "temporal_tls": TemporalTlsSettings(PEM_FILE, PEM_FILE, PEM_FILE, "tk-cloud-key"),
        "db_pool_size": 4,
        "db_max_overflow": 0,
        "db_timeouts": DbTimeouts(statement_seconds=12, lock_seconds=0.25, idle_in_transaction_seconds=90),
        "shards": {
            "eu-2": "postgresql+asyncpg://postgres@eu-2/tenants",
            "default": "postgresql+asyncpg://postgres@/postgres?host=/tmp/pg",
        },
    }
    assert ApiSettings.from_env(env) == ApiSettings(
        **common,
        grpc_address="0.0.0.0:6000",
        auth=AuthSettings(
            "https://login.example.com/", "tenantry-prod", None, "https://login.example.com/.well-known/jwks.json"
        ),
        tls=TlsSettings(Path("/tls/cert.pem"), Path("/tls/key.pem"), Path("/tls/clients.pem")),
        page_token_key=bytes(range(40)),
        listen_database_url="postgresql+asyncpg://postgres@db-direct/postgres",
    )
    assert WorkerSettings.from_env(env) == WorkerSettings(
        **common,
        reconcile_interval_seconds=2.5,
        sdk_metrics_address="[::1]:9998",
        liveness_file=tmp_path / "alive",
        migrations_dir=tmp_path,
    )
    assert MigrateSettings.from_env(env) == MigrateSettings(
        database_url=common["database_url"], migrations_dir=tmp_path, shards=common["shards"]
    )
    assert DevSettings.from_env(env) == DevSettings(
        database_url=common["database_url"], temporal_address="temporal.internal:7233", grpc_address="0.0.0.0:6000"
    )
    assert ApiSettings.from_env({**REQUIRED, "TENANTRY_GRPC_ADDRESS": "[::1]:50051"}).grpc_address == "[::1]:50051"
    for off in ("off", "OFF", " Off "):
        off_env = {**REQUIRED, "TENANTRY_METRICS_ADDRESS": off, "TENANTRY_SDK_METRICS_ADDRESS": off}
        assert ApiSettings.from_env(off_env).metrics_address is None
        worker = WorkerSettings.from_env(off_env)
        assert (worker.metrics_address, worker.sdk_metrics_address) == (None, None)


def test_temporal_tls_needs_a_temporal_address_under_tenantry_dev() -> None:
    # The embedded dev server speaks plaintext only.
    for variable in ("TENANTRY_TEMPORAL_TLS_CA_FILE", "TENANTRY_TEMPORAL_API_KEY"):
        with pytest.raises(SettingsError, match="TENANTRY_TEMPORAL_ADDRESS") as caught:
            DevSettings.from_env({variable: str(PEM_FILE)})
        assert variable in str(caught.value)
    with_address = {"TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS, "TENANTRY_TEMPORAL_API_KEY": "tk"}
    assert DevSettings.from_env(with_address).temporal_address == TEMPORAL_ADDRESS


def test_temporal_api_key_is_never_shown() -> None:
    settings = WorkerSettings.from_env({**REQUIRED, "TENANTRY_TEMPORAL_API_KEY": "tk-very-secret"})
    assert settings.temporal_tls.api_key == "tk-very-secret"
    assert "tk-very-secret" not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env({**REQUIRED, "TENANTRY_TEMPORAL_API_KEY": "tk very-secret"})
    assert "very-secret" not in str(caught.value)


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TENANTRY_"):
            monkeypatch.delenv(name)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TENANTRY_TASK_QUEUE", "from-os-environ")
    assert ApiSettings.from_env().task_queue == "from-os-environ"
    assert WorkerSettings.from_env().task_queue == "from-os-environ"
    assert MigrateSettings.from_env().database_url == DATABASE_URL
    assert DevSettings.from_env().database_url == DATABASE_URL


# Malformed for every process that reads the variable.
COMMON_MALFORMED: list[tuple[str, str | None]] = [
    ("TENANTRY_DATABASE_URL", None),
    ("TENANTRY_DATABASE_URL", ""),
    ("TENANTRY_DATABASE_URL", "   "),
    ("TENANTRY_DATABASE_URL", "postgresql://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "postgres://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "postgresql+psycopg2://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "mysql://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "secret"),
    ("TENANTRY_TEMPORAL_ADDRESS", None),
    ("TENANTRY_TEMPORAL_ADDRESS", ""),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:"),
    ("TENANTRY_TEMPORAL_ADDRESS", ":7233"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:port"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:70000"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:-1"),
    ("TENANTRY_TEMPORAL_NAMESPACE", "my namespace"),
    ("TENANTRY_TEMPORAL_NAMESPACE", "ns\tx"),
    ("TENANTRY_TEMPORAL_TLS_CERT_FILE", str(PEM_FILE)),  # without its key
    ("TENANTRY_TEMPORAL_TLS_KEY_FILE", str(PEM_FILE)),  # without its certificate
    ("TENANTRY_TEMPORAL_TLS_CA_FILE", "/nonexistent/ca.pem"),
    ("TENANTRY_TEMPORAL_TLS_CA_FILE", str(JWKS_FILE)),  # readable, but not PEM
    ("TENANTRY_TEMPORAL_TLS_CA_FILE", "/etc"),  # a directory
    ("TENANTRY_TEMPORAL_TLS_CERT_FILE", "/nonexistent/cert.pem"),
    ("TENANTRY_TEMPORAL_TLS_KEY_FILE", "/nonexistent/key.pem"),
    ("TENANTRY_TEMPORAL_API_KEY", "two words"),
    ("TENANTRY_TASK_QUEUE", "tenant provisioning"),
    ("TENANTRY_TASK_QUEUE", "queue\nx"),
    *(("TENANTRY_SHUTDOWN_GRACE_SECONDS", value) for value in ("abc", "0", "-1", "inf", "nan", "1e300")),
    # 0 would mean "no limit" to PostgreSQL: refused like any non-positive number.
    *(("TENANTRY_DB_STATEMENT_TIMEOUT_SECONDS", value) for value in ("abc", "0", "-1", "inf", "30s")),
    *(("TENANTRY_DB_LOCK_TIMEOUT_SECONDS", value) for value in ("abc", "0", "-0.5", "nan")),
    *(("TENANTRY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", value) for value in ("abc", "0", "-1", "1e300")),
    *(("TENANTRY_METRICS_ADDRESS", value) for value in ("nowhere", "127.0.0.1:port", "127.0.0.1:99999")),
    *(("TENANTRY_DB_POOL_SIZE", value) for value in ("0", "-1", "ten", "2.5", "1e3", "10001", "\u00b2", "1 0")),
    *(("TENANTRY_DB_MAX_OVERFLOW", value) for value in ("-1", "many", "0.5", "10001", "\uff15")),
    *(
        ("TENANTRY_SHARDS", value)
        for value in (
            "b=postgresql+asyncpg://x@h/d",
            "[]",
            "{}",
            '"postgresql+asyncpg://x@h/d"',
            '{"B": "postgresql+asyncpg://x@h/d"}',
            '{"": "postgresql+asyncpg://x@h/d"}',
            '{"b c": "postgresql+asyncpg://x@h/d"}',
            '{"b": "postgresql://tenantry:secret@h/d"}',
            '{"b": 5}',
            '{"b": null}',
            "{" + ", ".join(f'"s{i}": "postgresql+asyncpg://x@h/d"' for i in range(65)) + "}",
        )
    ),
]
API_MALFORMED: list[tuple[str, str | None]] = [
    ("TENANTRY_DELETION_RETENTION_SECONDS", "7d"),
    ("TENANTRY_DELETION_RETENTION_SECONDS", "0"),
    ("TENANTRY_DELETION_RETENTION_SECONDS", "-1"),
    ("TENANTRY_DELETION_RETENTION_SECONDS", "inf"),
    ("TENANTRY_GRPC_ADDRESS", "localhost"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:abc"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:65536"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:5 0"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:\u00b2"),  # superscript two: isdigit() but not int()
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:\uff15\uff10"),  # fullwidth digits
    ("TENANTRY_TLS_CERT_FILE", "/tls/cert.pem"),  # without its key
    ("TENANTRY_TLS_KEY_FILE", "/tls/key.pem"),  # without its certificate
    ("TENANTRY_TLS_CLIENT_CA_FILE", "/tls/ca.pem"),  # mTLS without TLS
    ("TENANTRY_PLAINTEXT_BEHIND_PROXY", "maybe"),
    ("TENANTRY_AUTH_ISSUER", None),
    ("TENANTRY_AUTH_ISSUER", " "),
    ("TENANTRY_AUTH_AUDIENCE", "two words"),
    ("TENANTRY_AUTH_JWKS_FILE", None),  # and no URL either
    ("TENANTRY_AUTH_JWKS_FILE", "/nonexistent/jwks.json"),
    ("TENANTRY_AUTH_JWKS_URL", "http://idp.example/jwks.json"),  # keys over plaintext: refused
    ("TENANTRY_PAGE_TOKEN_KEY", None),
    ("TENANTRY_LISTEN_DATABASE_URL", "postgresql://tenantry:secret@db/tenantry"),
    ("TENANTRY_LISTEN_DATABASE_URL", "secret"),
    ("TENANTRY_PAGE_TOKEN_KEY", "  "),
    ("TENANTRY_PAGE_TOKEN_KEY", "00" * 31),  # 31 bytes: too short
    ("TENANTRY_PAGE_TOKEN_KEY", base64.b64encode(bytes(31)).decode()),  # too short as base64 too
    ("TENANTRY_PAGE_TOKEN_KEY", "secret"),  # decodes, to 4 bytes
    ("TENANTRY_PAGE_TOKEN_KEY", "not a key: " + "x" * 64),  # neither hex nor base64
    ("TENANTRY_PAGE_TOKEN_KEY", "A" * 45),  # base64 of a length no encoder writes
]
HEALTHCHECK_MALFORMED: list[tuple[str, str | None]] = [
    ("TENANTRY_HEALTHCHECK_SERVER_NAME", "local host"),
    ("TENANTRY_HEALTHCHECK_CA_FILE", None),  # stands for the pair below: see test_healthcheck_pairs
    ("TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE", "/tls/client.pem"),  # without its key
    ("TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE", "/tls/client.key"),  # without its certificate
]
WORKER_MALFORMED: list[tuple[str, str | None]] = [
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "abc"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "30s"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "0"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "-5"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "nan"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "inf"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "-inf"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "1e300"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "1e-9"),  # rounds to a zero interval
    # The Temporal SDK's endpoint binds an IP socket address; it resolves no names.
    ("TENANTRY_SDK_METRICS_ADDRESS", "nowhere"),
    ("TENANTRY_SDK_METRICS_ADDRESS", "localhost:9465"),
    ("TENANTRY_SDK_METRICS_ADDRESS", "::1:9465"),
    ("TENANTRY_SDK_METRICS_ADDRESS", "127.0.0.1:99999"),
    ("TENANTRY_WORKER_LIVENESS_FILE", "/nonexistent-dir/alive"),
    ("TENANTRY_WORKER_LIVENESS_FILE", "/"),
    ("TENANTRY_MIGRATIONS_DIR", "/nonexistent-dir"),
    ("TENANTRY_MIGRATIONS_DIR", "/etc/hostname"),  # a file, not a directory
]
MIGRATE_MALFORMED = [
    (v, value) for v, value in COMMON_MALFORMED if v in ("TENANTRY_DATABASE_URL", "TENANTRY_SHARDS")
] + [(v, value) for v, value in WORKER_MALFORMED if v == "TENANTRY_MIGRATIONS_DIR"]
# tenantry-dev starts the servers it is not given, and checks what the services read.
DEV_MALFORMED = [
    (v, value)
    for v, value in COMMON_MALFORMED + API_MALFORMED + WORKER_MALFORMED
    if not (v in ("TENANTRY_DATABASE_URL", "TENANTRY_TEMPORAL_ADDRESS") and not (value or "").strip())
    # tenantry-dev makes its own signing key and page token key and sets these for the API.
    and not v.startswith(("TENANTRY_AUTH_", "TENANTRY_PAGE_TOKEN_KEY"))
]

READERS: dict[str, tuple[Callable[[Mapping[str, str]], object], list[tuple[str, str | None]]]] = {
    "api": (ApiSettings.from_env, COMMON_MALFORMED + API_MALFORMED),
    "worker": (WorkerSettings.from_env, COMMON_MALFORMED + WORKER_MALFORMED),
    "migrate": (MigrateSettings.from_env, MIGRATE_MALFORMED),
    "dev": (DevSettings.from_env, DEV_MALFORMED),
    "healthcheck": (HealthcheckSettings.from_env, [case for case in HEALTHCHECK_MALFORMED if case[1] is not None]),
}


@pytest.mark.parametrize(
    ("process", "variable", "value"),
    [(process, variable, value) for process, (_, cases) in READERS.items() for variable, value in cases],
    ids=lambda v: repr(v)[:40],
)
def test_malformed_variable_is_named(process: str, variable: str, value: str | None) -> None:
    read = READERS[process][0]
    env = dict(REQUIRED)
    if value is None:
        env.pop(variable, None)
    else:
        env[variable] = value
    with pytest.raises(SettingsError) as caught:
        read(env)
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message
    # A URL's password never reaches logs through an error message.
    assert "secret@" not in message


def test_the_page_token_key_is_never_shown() -> None:
    settings = ApiSettings.from_env(REQUIRED)
    assert settings.page_token_key == PAGE_TOKEN_KEY
    assert PAGE_TOKEN_KEY.hex() not in repr(settings) and repr(PAGE_TOKEN_KEY) not in repr(settings)
    short = "ab" * 31
    with pytest.raises(SettingsError) as caught:
        ApiSettings.from_env({**REQUIRED, "TENANTRY_PAGE_TOKEN_KEY": short})
    assert short not in str(caught.value) and "got 31" in str(caught.value)
    # Hex, base64 and base64url, padded or not, all work; hex wins when both read.
    for text in (
        PAGE_TOKEN_KEY.hex().upper(),
        base64.b64encode(PAGE_TOKEN_KEY).decode(),
        base64.urlsafe_b64encode(PAGE_TOKEN_KEY).decode().rstrip("="),
    ):
        assert ApiSettings.from_env({**REQUIRED, "TENANTRY_PAGE_TOKEN_KEY": text}).page_token_key == PAGE_TOKEN_KEY


def test_tenantry_dev_makes_a_page_token_key_once_and_keeps_it(tmp_path: Path) -> None:
    directory = tmp_path / ".tenantry"
    key = ensure_page_token_key(directory)
    assert ensure_page_token_key(directory) == key
    assert (directory / PAGE_TOKEN_KEY_FILE_NAME).stat().st_mode & 0o077 == 0
    assert len(ApiSettings.from_env({**REQUIRED, "TENANTRY_PAGE_TOKEN_KEY": key}).page_token_key) == 32
    assert ensure_page_token_key(tmp_path / "elsewhere") != key


def test_every_readme_variable_is_read_here() -> None:
    """The README's table and this module name the same variables, and every one
    is covered by a malformed case above (or is a free-form name with one)."""
    first_cells = re.findall(r"^\| (`TENANTRY_[^|]+)\|", (REPO_ROOT / "README.md").read_text(), re.MULTILINE)
    readme = {name for cell in first_cells for name in re.findall(r"`(TENANTRY_[A-Z_]+)`", cell)}
    source = (REPO_ROOT / "services/tenantry/settings.py").read_text()
    assert readme == set(re.findall(r'"(TENANTRY_[A-Z_]+)"', source))
    covered = {variable for _, cases in READERS.values() for variable, _ in cases}
    # A CA file has no malformed value of its own (any path parses; reading it fails at use).
    assert readme == covered | {"TENANTRY_HEALTHCHECK_CA_FILE"}


def test_probes_read_single_variables(tmp_path: Path) -> None:
    # The container HEALTHCHECKs need nothing but their own variable.
    assert grpc_address_from({}) == DEFAULT_GRPC_ADDRESS
    assert grpc_address_from({"TENANTRY_GRPC_ADDRESS": "0.0.0.0:50051"}) == "0.0.0.0:50051"
    assert liveness_file_from({}) == DEFAULT_LIVENESS_FILE
    assert liveness_file_from({"TENANTRY_WORKER_LIVENESS_FILE": str(tmp_path / "a")}) == tmp_path / "a"
    assert migrations_dir_from({"TENANTRY_MIGRATIONS_DIR": str(tmp_path)}) == tmp_path
    assert database_url_from({"TENANTRY_DATABASE_URL": DATABASE_URL}) == DATABASE_URL
    with pytest.raises(SettingsError, match="TENANTRY_DATABASE_URL"):
        database_url_from({})
    with pytest.raises(SettingsError, match="TENANTRY_GRPC_ADDRESS"):
        grpc_address_from({"TENANTRY_GRPC_ADDRESS": "nowhere"})


def test_load_or_exit_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_or_exit(ApiSettings.from_env, {"TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS})
    assert caught.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "TENANTRY_DATABASE_URL" in lines[0]
    assert load_or_exit(ApiSettings.from_env, REQUIRED) == ApiSettings.from_env(REQUIRED)
    assert load_or_exit(WorkerSettings.from_env, REQUIRED) == WorkerSettings.from_env(REQUIRED)


# --- the real console scripts --------------------------------------------------

SCRIPTS = ("tenant-api", "provisioner-worker", "tenantry-migrate")
SERVICES = ("tenant-api", "provisioner-worker")


def _base_env() -> dict[str, str]:
    """A minimal environment: nothing TENANTRY_* leaks in from the test run."""
    env = {"PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": os.environ.get("HOME", "/tmp")}
    for name in ("LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    # Never bind real ports if a script got as far as serving metrics.
    env["TENANTRY_METRICS_ADDRESS"] = "off"
    env["TENANTRY_SDK_METRICS_ADDRESS"] = "off"
    return env


def _run_script(script: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    path = BIN_DIR / script
    assert path.exists(), f"{path} missing: is the project installed in the venv?"
    return subprocess.run(
        [str(path)], env=dict(env), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _assert_config_error(result: subprocess.CompletedProcess[str], variable: str) -> None:
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr + result.stdout, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert variable in lines[0], output
    assert "secret" not in result.stderr, output


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_without_database_url_exits_2(script: str) -> None:
    _assert_config_error(_run_script(script, _base_env()), "TENANTRY_DATABASE_URL")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_with_wrong_database_driver_exits_2(script: str) -> None:
    env = {**_base_env(), "TENANTRY_DATABASE_URL": "postgresql://tenantry:secret@127.0.0.1:1/tenantry"}
    _assert_config_error(
        _run_script(script, {**env, "TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS}), "TENANTRY_DATABASE_URL"
    )


@pytest.mark.parametrize(
    ("script", "variable", "value"),
    [
        *(
            (script, variable, value)
            for script in SERVICES
            for variable, value in (
                ("TENANTRY_TEMPORAL_ADDRESS", ""),
                ("TENANTRY_TEMPORAL_NAMESPACE", "my namespace"),
                ("TENANTRY_SHUTDOWN_GRACE_SECONDS", "abc"),
                ("TENANTRY_METRICS_ADDRESS", "nowhere"),
            )
        ),
        ("tenant-api", "TENANTRY_GRPC_ADDRESS", "127.0.0.1:\u00b2"),
        ("tenant-api", "TENANTRY_TEMPORAL_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ("provisioner-worker", "TENANTRY_TEMPORAL_TLS_CERT_FILE", "/nonexistent/cert.pem"),
        ("provisioner-worker", "TENANTRY_RECONCILE_INTERVAL_SECONDS", "abc"),
        ("provisioner-worker", "TENANTRY_RECONCILE_INTERVAL_SECONDS", "inf"),
        ("provisioner-worker", "TENANTRY_WORKER_LIVENESS_FILE", "/nonexistent-dir/alive"),
        ("provisioner-worker", "TENANTRY_MIGRATIONS_DIR", "/nonexistent-dir"),
        ("tenantry-migrate", "TENANTRY_MIGRATIONS_DIR", "/nonexistent-dir"),
        # tenantry-dev checks what the services it starts read, before starting anything.
        ("tenantry-dev", "TENANTRY_GRPC_ADDRESS", "localhost"),
        ("tenantry-dev", "TENANTRY_DATABASE_URL", "postgresql://tenantry:secret@127.0.0.1:1/tenantry"),
        ("tenantry-dev", "TENANTRY_RECONCILE_INTERVAL_SECONDS", "abc"),
        ("tenantry-dev", "TENANTRY_SDK_METRICS_ADDRESS", "localhost:9465"),
    ],
)
def test_script_with_malformed_variable_exits_2(script: str, variable: str, value: str) -> None:
    # Everything else is well-formed (and unreachable): the process must stop at
    # configuration, before it tries to connect anywhere.
    env = {**_base_env(), **REQUIRED, variable: value}
    _assert_config_error(_run_script(script, env), variable)


@pytest.mark.parametrize("value", ["nowhere", "localhost:9465"])
def test_worker_with_malformed_sdk_metrics_address_exits_2(value: str) -> None:
    # The Temporal SDK's Prometheus endpoint takes an IP socket address only.
    env = {**_base_env(), **REQUIRED, "TENANTRY_SDK_METRICS_ADDRESS": value}
    _assert_config_error(_run_script("provisioner-worker", env), "TENANTRY_SDK_METRICS_ADDRESS")


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("tenant_api.healthcheck", "TENANTRY_GRPC_ADDRESS", "nowhere"),
        ("provisioner_worker.liveness", "TENANTRY_WORKER_LIVENESS_FILE", "/nonexistent-dir/alive"),
    ],
)
def test_container_probe_with_malformed_variable_exits_2(module: str, variable: str, value: str) -> None:
    env = {**_base_env(), variable: value}
    result = subprocess.run(
        [str(BIN_DIR / "python"), "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    _assert_config_error(result, variable)


def test_shards_default_to_the_control_plane_and_keep_it_as_default() -> None:
    other = "postgresql+asyncpg://tenantry:secret@shard-b/tenants"
    assert WorkerSettings.from_env(REQUIRED).shards == {"default": DATABASE_URL}
    named = WorkerSettings.from_env({**REQUIRED, "TENANTRY_SHARDS": json.dumps({"b": other})})
    assert named.shards == {"b": other, "default": DATABASE_URL}
    moved = ApiSettings.from_env({**REQUIRED, "TENANTRY_SHARDS": json.dumps({"default": other})})
    assert moved.shards == {"default": other}
