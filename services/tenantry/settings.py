"""Process configuration from the environment (see the design's table)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "tenant-provisioning"
DEFAULT_RECONCILE_INTERVAL_SECONDS = 30.0


class SettingsError(Exception):
    """A missing or malformed variable; the message names it."""


@dataclass(frozen=True)
class Settings:
    grpc_address: str
    database_url: str
    temporal_address: str
    temporal_namespace: str
    task_queue: str
    reconcile_interval_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            grpc_address=_address(env, "TENANTRY_GRPC_ADDRESS", DEFAULT_GRPC_ADDRESS),
            database_url=database_url_from(env),
            temporal_address=_address(env, "TENANTRY_TEMPORAL_ADDRESS", None),
            temporal_namespace=_name(env, "TENANTRY_TEMPORAL_NAMESPACE", DEFAULT_NAMESPACE),
            task_queue=_name(env, "TENANTRY_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            reconcile_interval_seconds=_positive_float(
                env, "TENANTRY_RECONCILE_INTERVAL_SECONDS", DEFAULT_RECONCILE_INTERVAL_SECONDS
            ),
        )


def load_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a process entry point: one clear line and exit 2 on error."""
    try:
        return Settings.from_env(env)
    except SettingsError as exc:
        exit_with_config_error(str(exc))


def exit_with_config_error(message: str) -> NoReturn:
    print(f"configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is required but not set")
    return value


def database_url_from(env: Mapping[str, str]) -> str:
    name = "TENANTRY_DATABASE_URL"
    value = _required(env, name)
    if not value.startswith("postgresql+asyncpg://"):
        raise SettingsError(f"{name} must be a postgresql+asyncpg:// URL, got {value.split(':', 1)[0]!r}")
    return value


def _address(env: Mapping[str, str], name: str, default: str | None) -> str:
    value = env.get(name, "").strip() or default
    if value is None:
        raise SettingsError(f"{name} is required but not set")
    host, sep, port = value.rpartition(":")
    # isascii: "²".isdigit() is true but int("²") raises.
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port, got {value!r}")
    return value


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if any(c.isspace() for c in value):
        raise SettingsError(f"{name} must not contain whitespace, got {value!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
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


def metrics_address_from(env: Mapping[str, str], default: str) -> str:
    """TENANTRY_METRICS_ADDRESS: host:port of the Prometheus endpoint, "off" to disable."""
    value = env.get("TENANTRY_METRICS_ADDRESS", "").strip()
    if value.lower() == "off":
        return ""
    return _address(env, "TENANTRY_METRICS_ADDRESS", default)


def shutdown_grace_from(env: Mapping[str, str]) -> float:
    """TENANTRY_SHUTDOWN_GRACE_SECONDS: how long in-flight work may finish after SIGTERM."""
    return _positive_float(env, "TENANTRY_SHUTDOWN_GRACE_SECONDS", 10.0)
