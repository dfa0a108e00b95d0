"""Process configuration from the environment: every TENANTRY_* variable a
process reads is read, validated and defaulted here, once, at its start (the
README's table). Nothing else in services/ parses a TENANTRY_* variable
(tenantry.migrations asks `migrations_dir_from` for its directory); in
devtools/, `tenantry-token` takes its defaults for --issuer and --audience
from TENANTRY_AUTH_ISSUER / _AUDIENCE when set.

One settings class per process, the services sharing their common part:

    MigrateSettings   tenantry-migrate
    ApiSettings       tenant-api           CommonSettings + the API's own
    WorkerSettings    provisioner-worker   CommonSettings + the worker's own
    DevSettings       tenantry-dev         (also checks what the services it starts read)

A new variable is one field on the class of the processes that read it (on
CommonSettings if both services do) and one line in that class's `from_env`,
with the parser for its kind from the bottom of this module. A parser raises
SettingsError with one line naming the variable; `load_or_exit` turns it into
exit status 2, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

Env = Mapping[str, str]

DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "tenant-provisioning"
DEFAULT_RECONCILE_INTERVAL_SECONDS = 30.0
# How long DeleteTenant keeps an ACTIVE or SUSPENDED tenant's data (7 days).
DEFAULT_DELETION_RETENTION_SECONDS = 7 * 24 * 3600.0
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_API_METRICS_ADDRESS = "127.0.0.1:9464"
DEFAULT_WORKER_METRICS_ADDRESS = "127.0.0.1:9466"
DEFAULT_SDK_METRICS_ADDRESS = "127.0.0.1:9465"
DEFAULT_HEALTHCHECK_SERVER_NAME = "localhost"
DEFAULT_AUTH_AUDIENCE = "tenantry"
DEFAULT_LIVENESS_FILE = Path("/tmp/provisioner-worker.alive")
# SQLAlchemy's pool per process: pool_size kept open, up to max_overflow more
# under load (tenantry.db.connection_budget checks both fit at start). The worker
# may run MAX_CONCURRENT_ACTIVITIES (20) activities at once, one connection each.
DEFAULT_DB_POOL_SIZE = 10
DEFAULT_API_DB_MAX_OVERFLOW = 10
DEFAULT_WORKER_DB_MAX_OVERFLOW = 20
MAX_DB_CONNECTIONS = 10_000
# services/tenantry/settings.py -> the checkout's migrations/ (the images set the variable).
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Bounds on every database session (tenantry.db.engine): the API answers
# interactive calls, the worker runs DDL inside a 60 s activity step.
DEFAULT_API_STATEMENT_TIMEOUT_SECONDS = 30.0
DEFAULT_WORKER_STATEMENT_TIMEOUT_SECONDS = 50.0
DEFAULT_LOCK_TIMEOUT_SECONDS = 5.0
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = 30.0
PAGE_TOKEN_KEY = "TENANTRY_PAGE_TOKEN_KEY"
SHARDS = "TENANTRY_SHARDS"
# The shard every tenant registered before shards existed is on; unless
# TENANTRY_SHARDS names it, it is the control-plane database itself.
DEFAULT_SHARD = "default"
# Shard names are recorded per tenant and appear in metrics labels and logs.
SHARD_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,30}")
MAX_SHARDS = 64
LISTEN_DATABASE_URL = "TENANTRY_LISTEN_DATABASE_URL"
MIN_SECRET_KEY_BYTES = 32


TLS_CERT_FILE = "TENANTRY_TLS_CERT_FILE"
TLS_KEY_FILE = "TENANTRY_TLS_KEY_FILE"
TLS_CLIENT_CA_FILE = "TENANTRY_TLS_CLIENT_CA_FILE"
PLAINTEXT_BEHIND_PROXY = "TENANTRY_PLAINTEXT_BEHIND_PROXY"
TEMPORAL_TLS_CA_FILE = "TENANTRY_TEMPORAL_TLS_CA_FILE"
TEMPORAL_TLS_CERT_FILE = "TENANTRY_TEMPORAL_TLS_CERT_FILE"
TEMPORAL_TLS_KEY_FILE = "TENANTRY_TEMPORAL_TLS_KEY_FILE"
TEMPORAL_API_KEY = "TENANTRY_TEMPORAL_API_KEY"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class SettingsError(Exception):
    """A missing or malformed variable; the message names it."""


# --- per process ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MigrateSettings:
    """`shards`: every tenant-schema database by name (shards_from); `roles`
    and the privileges are applied to each of them too."""

    database_url: str
    migrations_dir: Path
    shards: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Env | None = None) -> MigrateSettings:
        env = _environ(env)
        database_url = database_url_from(env)
        return cls(
            database_url=database_url,
            migrations_dir=migrations_dir_from(env),
            shards=shards_from(env, database_url),
        )


@dataclass(frozen=True, kw_only=True)
class MigrateTenantsSettings(MigrateSettings):
    """`tenantry-migrate tenants`: the database and how to reach Temporal and
    the worker's task queue (the same variables as the services)."""

    temporal_address: str
    temporal_namespace: str
    task_queue: str
    temporal_tls: TemporalTlsSettings

    @classmethod
    def from_env(cls, env: Env | None = None) -> MigrateTenantsSettings:
        env = _environ(env)
        database_url = database_url_from(env)
        return cls(
            database_url=database_url,
            migrations_dir=migrations_dir_from(env),
            shards=shards_from(env, database_url),
            temporal_address=_address(env, "TENANTRY_TEMPORAL_ADDRESS", None),
            temporal_namespace=_name(env, "TENANTRY_TEMPORAL_NAMESPACE", DEFAULT_NAMESPACE),
            task_queue=_name(env, "TENANTRY_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            temporal_tls=TemporalTlsSettings.from_env(env),
        )


@dataclass(frozen=True)
class TemporalTlsSettings:
    """How both services reach Temporal (see tenantry.temporal_connection):
    TLS verified against `ca_file` (the system roots when unset), a client
    certificate for mTLS, an API key (Temporal Cloud). Any of them turns TLS
    on; none: plaintext. The files were readable PEM when the settings were
    read; the connection reads them again."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Never in a repr, hence never in a log line.
    api_key: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return any(value is not None for value in (self.ca_file, self.cert_file, self.api_key))

    @classmethod
    def from_env(cls, env: Env) -> TemporalTlsSettings:
        cert = _pem_file(env, TEMPORAL_TLS_CERT_FILE)
        key = _pem_file(env, TEMPORAL_TLS_KEY_FILE)
        if cert is not None and key is None:
            raise SettingsError(f"{TEMPORAL_TLS_KEY_FILE} is required when {TEMPORAL_TLS_CERT_FILE} is set")
        if key is not None and cert is None:
            raise SettingsError(f"{TEMPORAL_TLS_CERT_FILE} is required when {TEMPORAL_TLS_KEY_FILE} is set")
        api_key = env.get(TEMPORAL_API_KEY, "").strip() or None
        if api_key is not None and (any(c.isspace() for c in api_key) or not api_key.isascii()):
            # Sent as an HTTP header; the value itself never goes into the message.
            raise SettingsError(f"{TEMPORAL_API_KEY} must be one token of ASCII characters without whitespace")
        return cls(ca_file=_pem_file(env, TEMPORAL_TLS_CA_FILE), cert_file=cert, key_file=key, api_key=api_key)


@dataclass(frozen=True)
class DbTimeouts:
    """How long any one database session may wait (see tenantry.db.engine):
    a statement (`statement_timeout`), a lock (`lock_timeout`; the worker's
    steps retry a lock wait that runs out), and an open transaction whose
    client sends nothing (`idle_in_transaction_session_timeout`: the server
    ends the session of a frozen or vanished holder, releasing its locks)."""

    statement_seconds: float = DEFAULT_API_STATEMENT_TIMEOUT_SECONDS
    lock_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    idle_in_transaction_seconds: float = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, env: Env, *, default_statement_seconds: float) -> DbTimeouts:
        return cls(
            statement_seconds=_seconds(env, "TENANTRY_DB_STATEMENT_TIMEOUT_SECONDS", default_statement_seconds),
            lock_seconds=_seconds(env, "TENANTRY_DB_LOCK_TIMEOUT_SECONDS", DEFAULT_LOCK_TIMEOUT_SECONDS),
            idle_in_transaction_seconds=_seconds(
                env, "TENANTRY_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS
            ),
        )


@dataclass(frozen=True, kw_only=True)
class CommonSettings:
    """What both services read. `metrics_address` None: the endpoint is off.
    `shards`: the databases holding tenant schemas, by name (shards_from)."""

    database_url: str
    temporal_address: str
    temporal_namespace: str
    task_queue: str
    shutdown_grace_seconds: float
    metrics_address: str | None
    temporal_tls: TemporalTlsSettings = TemporalTlsSettings()
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    db_max_overflow: int = DEFAULT_API_DB_MAX_OVERFLOW
    db_timeouts: DbTimeouts = DbTimeouts()
    shards: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def _common(
        cls, env: Env, *, default_metrics_address: str, default_max_overflow: int, default_statement_seconds: float
    ) -> dict[str, Any]:
        database_url = database_url_from(env)
        common = CommonSettings(
            database_url=database_url,
            temporal_address=_address(env, "TENANTRY_TEMPORAL_ADDRESS", None),
            temporal_namespace=_name(env, "TENANTRY_TEMPORAL_NAMESPACE", DEFAULT_NAMESPACE),
            task_queue=_name(env, "TENANTRY_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            shutdown_grace_seconds=_seconds(env, "TENANTRY_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS),
            metrics_address=_address_or_off(env, "TENANTRY_METRICS_ADDRESS", default_metrics_address),
            temporal_tls=TemporalTlsSettings.from_env(env),
            db_pool_size=_count(env, "TENANTRY_DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE, minimum=1),
            db_max_overflow=_count(env, "TENANTRY_DB_MAX_OVERFLOW", default_max_overflow, minimum=0),
            db_timeouts=DbTimeouts.from_env(env, default_statement_seconds=default_statement_seconds),
            shards=shards_from(env, database_url),
        )
        # Shallow (asdict would turn the nested settings into dicts).
        return {f.name: getattr(common, f.name) for f in fields(common)}


@dataclass(frozen=True)
class TlsSettings:
    """How the API listens (see tenant_api.transport). Paths only: the files
    are read and checked when the server credentials are built."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    plaintext_behind_proxy: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @classmethod
    def from_env(cls, env: Env) -> TlsSettings:
        cert = _path(env, TLS_CERT_FILE)
        key = _path(env, TLS_KEY_FILE)
        client_ca = _path(env, TLS_CLIENT_CA_FILE)
        if cert is not None and key is None:
            raise SettingsError(f"{TLS_KEY_FILE} is required when {TLS_CERT_FILE} is set")
        if key is not None and cert is None:
            raise SettingsError(f"{TLS_CERT_FILE} is required when {TLS_KEY_FILE} is set")
        if client_ca is not None and cert is None:
            raise SettingsError(
                f"{TLS_CLIENT_CA_FILE} needs {TLS_CERT_FILE} and {TLS_KEY_FILE} (mTLS is TLS plus client certificates)"
            )
        return cls(
            cert_file=cert,
            key_file=key,
            client_ca_file=client_ca,
            plaintext_behind_proxy=_flag(env, PLAINTEXT_BEHIND_PROXY),
        )


@dataclass(frozen=True)
class AuthSettings:
    """How the API verifies bearer tokens (see tenant_api.authentication).
    Exactly one of `jwks_file` and `jwks_url` is set."""

    issuer: str
    audience: str
    jwks_file: Path | None
    jwks_url: str | None

    @classmethod
    def from_env(cls, env: Env) -> AuthSettings:
        issuer = _required(env, "TENANTRY_AUTH_ISSUER")
        audience = _name(env, "TENANTRY_AUTH_AUDIENCE", DEFAULT_AUTH_AUDIENCE)
        jwks_file = env.get("TENANTRY_AUTH_JWKS_FILE", "").strip()
        jwks_url = env.get("TENANTRY_AUTH_JWKS_URL", "").strip()
        if jwks_file and jwks_url:
            raise SettingsError("TENANTRY_AUTH_JWKS_FILE and TENANTRY_AUTH_JWKS_URL are both set; set exactly one")
        if jwks_url:
            if not jwks_url.lower().startswith("https://"):
                raise SettingsError(
                    f"TENANTRY_AUTH_JWKS_URL must be an https:// URL, got {jwks_url.split(':', 1)[0]!r}"
                )
            return cls(issuer=issuer, audience=audience, jwks_file=None, jwks_url=jwks_url)
        if not jwks_file:
            raise SettingsError("TENANTRY_AUTH_JWKS_FILE (or TENANTRY_AUTH_JWKS_URL) is required but not set")
        if not Path(jwks_file).is_file():
            raise SettingsError(f"TENANTRY_AUTH_JWKS_FILE names no readable file: {jwks_file}")
        return cls(issuer=issuer, audience=audience, jwks_file=Path(jwks_file), jwks_url=None)


@dataclass(frozen=True, kw_only=True)
class ApiSettings(CommonSettings):
    """`page_token_key`: signs page tokens (HMAC-SHA256); never in a repr.
    `listen_database_url`: where the LISTEN connections go when the pool's
    `database_url` is a transaction-mode PgBouncer (None: `database_url`)."""

    grpc_address: str
    auth: AuthSettings
    page_token_key: bytes = field(repr=False)
    tls: TlsSettings = TlsSettings()
    deletion_retention_seconds: float = DEFAULT_DELETION_RETENTION_SECONDS
    listen_database_url: str | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> ApiSettings:
        env = _environ(env)
        return cls(
            **cls._common(
                env,
                default_metrics_address=DEFAULT_API_METRICS_ADDRESS,
                default_max_overflow=DEFAULT_API_DB_MAX_OVERFLOW,
                default_statement_seconds=DEFAULT_API_STATEMENT_TIMEOUT_SECONDS,
            ),
            grpc_address=grpc_address_from(env),
            auth=AuthSettings.from_env(env),
            page_token_key=_secret_key(env, PAGE_TOKEN_KEY),
            tls=TlsSettings.from_env(env),
            deletion_retention_seconds=_seconds(
                env, "TENANTRY_DELETION_RETENTION_SECONDS", DEFAULT_DELETION_RETENTION_SECONDS
            ),
            listen_database_url=database_url_from(env, LISTEN_DATABASE_URL)
            if _is_set(env, LISTEN_DATABASE_URL)
            else None,
        )


@dataclass(frozen=True, kw_only=True)
class HealthcheckSettings:
    """The API image's HEALTHCHECK (tenant_api.healthcheck): the API's own
    address and TLS settings, plus how the probe verifies and identifies itself
    when TLS is on."""

    grpc_address: str
    tls: TlsSettings = TlsSettings()
    ca_file: Path | None
    server_name: str
    client_cert_file: Path | None
    client_key_file: Path | None

    @classmethod
    def from_env(cls, env: Env | None = None) -> HealthcheckSettings:
        env = _environ(env)
        settings = cls(
            grpc_address=grpc_address_from(env),
            tls=TlsSettings.from_env(env),
            ca_file=_path(env, "TENANTRY_HEALTHCHECK_CA_FILE"),
            server_name=_name(env, "TENANTRY_HEALTHCHECK_SERVER_NAME", DEFAULT_HEALTHCHECK_SERVER_NAME),
            client_cert_file=_path(env, "TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE"),
            client_key_file=_path(env, "TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE"),
        )
        if (settings.client_cert_file is None) != (settings.client_key_file is None):
            raise SettingsError(
                "TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE and TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE go together"
            )
        if settings.tls.mutual and settings.client_cert_file is None:
            raise SettingsError(
                f"mTLS is on ({TLS_CLIENT_CA_FILE}): set TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE and "
                "TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE to a client certificate signed by that CA"
            )
        return settings


@dataclass(frozen=True, kw_only=True)
class WorkerSettings(CommonSettings):
    """`sdk_metrics_address` None: the Temporal SDK's endpoint is off."""

    reconcile_interval_seconds: float
    sdk_metrics_address: str | None
    liveness_file: Path
    migrations_dir: Path
    db_max_overflow: int = DEFAULT_WORKER_DB_MAX_OVERFLOW

    @classmethod
    def from_env(cls, env: Env | None = None) -> WorkerSettings:
        env = _environ(env)
        return cls(
            **cls._common(
                env,
                default_metrics_address=DEFAULT_WORKER_METRICS_ADDRESS,
                default_max_overflow=DEFAULT_WORKER_DB_MAX_OVERFLOW,
                default_statement_seconds=DEFAULT_WORKER_STATEMENT_TIMEOUT_SECONDS,
            ),
            reconcile_interval_seconds=_seconds(
                env, "TENANTRY_RECONCILE_INTERVAL_SECONDS", DEFAULT_RECONCILE_INTERVAL_SECONDS
            ),
            sdk_metrics_address=_ip_address_or_off(env, "TENANTRY_SDK_METRICS_ADDRESS", DEFAULT_SDK_METRICS_ADDRESS),
            liveness_file=liveness_file_from(env),
            migrations_dir=migrations_dir_from(env),
        )


@dataclass(frozen=True, kw_only=True)
class DevSettings:
    """tenantry-dev: a server left unset (None) is started embedded."""

    database_url: str | None
    temporal_address: str | None
    grpc_address: str

    @classmethod
    def from_env(cls, env: Env | None = None) -> DevSettings:
        env = _environ(env)
        settings = cls(
            database_url=database_url_from(env) if _is_set(env, "TENANTRY_DATABASE_URL") else None,
            temporal_address=_address(env, "TENANTRY_TEMPORAL_ADDRESS", None)
            if _is_set(env, "TENANTRY_TEMPORAL_ADDRESS")
            else None,
            grpc_address=grpc_address_from(env),
        )
        # The services it starts read the rest of the environment: a malformed
        # value stops tenantry-dev before anything starts. Placeholders stand in
        # for the embedded servers, which do not exist yet.
        probe = {
            **env,
            "TENANTRY_DATABASE_URL": settings.database_url or "postgresql+asyncpg://embedded",
            "TENANTRY_TEMPORAL_ADDRESS": settings.temporal_address or "127.0.0.1:7233",
            # tenantry-dev makes its own signing key and sets these for the API.
            "TENANTRY_AUTH_ISSUER": "tenantry-dev",
            "TENANTRY_AUTH_JWKS_FILE": "",
            "TENANTRY_AUTH_JWKS_URL": "https://tenantry-dev.invalid/jwks.json",
            # ... and its own page token key.
            PAGE_TOKEN_KEY: "00" * MIN_SECRET_KEY_BYTES,
        }
        ApiSettings.from_env(probe)
        worker = WorkerSettings.from_env(probe)
        if settings.temporal_address is None and worker.temporal_tls.enabled:
            raise SettingsError(
                f"{TEMPORAL_TLS_CA_FILE}, {TEMPORAL_TLS_CERT_FILE}, {TEMPORAL_TLS_KEY_FILE} and {TEMPORAL_API_KEY} "
                "need TENANTRY_TEMPORAL_ADDRESS: the embedded Temporal dev server speaks plaintext only"
            )
        return settings


# --- single variables, also for the container probes and the migrations runner -------


def database_url_from(env: Env, name: str = "TENANTRY_DATABASE_URL") -> str:
    value = _required(env, name)
    if not value.startswith("postgresql+asyncpg://"):
        # Only the scheme: the rest may hold a password.
        raise SettingsError(f"{name} must be a postgresql+asyncpg:// URL, got {value.split(':', 1)[0]!r}")
    return value


def shards_from(env: Env, database_url: str) -> dict[str, str]:
    """TENANTRY_SHARDS: a JSON object of shard name -> asyncpg URL. The shard
    DEFAULT_SHARD always exists (every tenant registered before shards is
    there): when the object does not name it, it is `database_url`, the
    control plane's own database. Unset: that one shard."""
    raw = env.get(SHARDS, "").strip()
    shards: dict[str, str] = {}
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise SettingsError(f'{SHARDS} must be a JSON object {{"name": "postgresql+asyncpg://..."}}') from None
        if not isinstance(parsed, dict) or not parsed:
            raise SettingsError(f'{SHARDS} must be a non-empty JSON object {{"name": "postgresql+asyncpg://..."}}')
        if len(parsed) > MAX_SHARDS:
            raise SettingsError(f"{SHARDS} names {len(parsed)} shards; at most {MAX_SHARDS}")
        for name, url in parsed.items():
            if not SHARD_NAME_PATTERN.fullmatch(name):
                raise SettingsError(f"{SHARDS}: shard names must match {SHARD_NAME_PATTERN.pattern}, got {name!r}")
            if not isinstance(url, str):
                raise SettingsError(f"{SHARDS}: shard {name!r} must be a URL string")
            shards[name] = database_url_from({SHARDS: url}, SHARDS)
    shards.setdefault(DEFAULT_SHARD, database_url)
    return shards


def grpc_address_from(env: Env) -> str:
    return _address(env, "TENANTRY_GRPC_ADDRESS", DEFAULT_GRPC_ADDRESS)


def liveness_file_from(env: Env) -> Path:
    return _file_in_existing_directory(env, "TENANTRY_WORKER_LIVENESS_FILE", DEFAULT_LIVENESS_FILE)


def migrations_dir_from(env: Env) -> Path:
    return _directory(env, "TENANTRY_MIGRATIONS_DIR", DEFAULT_MIGRATIONS_DIR)


# --- entry points -----------------------------------------------------------------

T = TypeVar("T")


def load_or_exit(read: Callable[[Env], T], env: Env | None = None) -> T:
    """`read(env)` for a process entry point: one clear line and exit 2 on error."""
    try:
        return read(_environ(env))
    except SettingsError as exc:
        exit_with_config_error(str(exc))


def exit_with_config_error(message: str) -> NoReturn:
    print(f"configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --- parsers, one per kind of value; a blank value means unset ----------------------


def _environ(env: Env | None) -> Env:
    return os.environ if env is None else env


def _is_set(env: Env, name: str) -> bool:
    return bool(env.get(name, "").strip())


def _required(env: Env, name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is required but not set")
    return value


def _address(env: Env, name: str, default: str | None) -> str:
    """host:port; `default` None: required."""
    value = env.get(name, "").strip() or default
    if value is None:
        raise SettingsError(f"{name} is required but not set")
    host, sep, port = value.rpartition(":")
    # isascii: "²".isdigit() is true but int("²") raises.
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port, got {value!r}")
    return value


def _address_or_off(env: Env, name: str, default: str) -> str | None:
    """host:port, or "off" (any case) for None."""
    if env.get(name, "").strip().lower() == "off":
        return None
    return _address(env, name, default)


def _ip_address_or_off(env: Env, name: str, default: str) -> str | None:
    """IPv4:port or [IPv6]:port, or "off" for None: for listeners that resolve no names."""
    value = _address_or_off(env, name, default)
    if value is None:
        return None
    host = value.rpartition(":")[0]
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        raise SettingsError(
            f"{name} must be an IP address and port ([...] around IPv6, no host names), got {value!r}"
        ) from None
    return value


def _name(env: Env, name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if any(c.isspace() for c in value):
        raise SettingsError(f"{name} must not contain whitespace, got {value!r}")
    return value


def _seconds(env: Env, name: str, default: float) -> float:
    """A positive number of seconds."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
        # inf, nan and huge values parse as floats but break timedelta later.
        as_delta = timedelta(seconds=value)
    except (ValueError, OverflowError):
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not as_delta > timedelta(0):
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _count(env: Env, name: str, default: int, *, minimum: int) -> int:
    """A whole number from `minimum` to MAX_DB_CONNECTIONS."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # isascii: "²".isdigit() is true but int("²") raises.
    if not (raw.isascii() and raw.isdigit()):
        raise SettingsError(f"{name} must be a whole number, got {raw!r}")
    value = int(raw)
    if not minimum <= value <= MAX_DB_CONNECTIONS:
        raise SettingsError(f"{name} must be from {minimum} to {MAX_DB_CONNECTIONS}, got {raw!r}")
    return value


def _secret_key(env: Env, name: str) -> bytes:
    """Required: at least MIN_SECRET_KEY_BYTES random bytes, written as hex
    (`openssl rand -hex 32`) or base64 / base64url, padded or not
    (`openssl rand -base64 32`). Hex wins when the text is both. Errors never
    echo the value."""
    raw = _required(env, name)
    try:
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", raw):
            key = bytes.fromhex(raw)
        elif re.fullmatch(r"[A-Za-z0-9+/\-_]+={0,2}", raw):
            unpadded = raw.rstrip("=").replace("-", "+").replace("_", "/")
            key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
        else:
            raise ValueError("neither hex nor base64")
    except (ValueError, binascii.Error):
        raise SettingsError(f"{name} must be hex or base64 (e.g. `openssl rand -hex 32`)") from None
    if len(key) < MIN_SECRET_KEY_BYTES:
        raise SettingsError(
            f"{name} must hold at least {MIN_SECRET_KEY_BYTES} bytes, got {len(key)} (e.g. `openssl rand -hex 32`)"
        )
    return key


def _directory(env: Env, name: str, default: Path) -> Path:
    """An existing directory."""
    raw = env.get(name, "").strip()
    path = Path(raw) if raw else default
    if not path.is_dir():
        raise SettingsError(f"{name} must be an existing directory, got {str(path)!r}")
    return path


def _file_in_existing_directory(env: Env, name: str, default: Path) -> Path:
    """A file the process creates: its directory must exist."""
    raw = env.get(name, "").strip()
    path = Path(raw) if raw else default
    if path.name in ("", ".", "..") or not path.parent.is_dir():
        raise SettingsError(f"{name} must be a file in an existing directory, got {str(path)!r}")
    return path


def _path(env: Env, name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None


def _pem_file(env: Env, name: str) -> Path | None:
    """A readable PEM file (certificates or a key), checked now so that a wrong
    path stops the process at start rather than at its first Temporal call."""
    path = _path(env, name)
    if path is None:
        return None
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name} names no readable file: {path} ({exc.strerror or type(exc).__name__})") from None
    if b"-----BEGIN " not in content:
        raise SettingsError(f"{name} is not a PEM file: {path}")
    return path


def _flag(env: Env, name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if not value or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise SettingsError(f"{name} must be true or false, got {value!r}")
