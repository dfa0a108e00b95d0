"""What both services do at start: JSON logs, settings (one line and exit 2 if
malformed), their Prometheus endpoint and the shutdown grace period."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from tenantry.observability import configure_logging, serve_metrics
from tenantry.settings import (
    Settings,
    SettingsError,
    exit_with_config_error,
    load_or_exit,
    metrics_address_from,
    shutdown_grace_from,
)


@dataclass(frozen=True)
class ProcessConfig:
    settings: Settings
    grace_seconds: float


def start_process(service: str, default_metrics_address: str) -> ProcessConfig:
    configure_logging(service)
    settings = load_or_exit()
    try:
        metrics_address = metrics_address_from(os.environ, default_metrics_address)
        grace_seconds = shutdown_grace_from(os.environ)
    except SettingsError as exc:
        exit_with_config_error(str(exc))
    try:
        serve_metrics(metrics_address)
    except OSError as exc:
        print(f"{service}: cannot serve metrics on {metrics_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return ProcessConfig(settings=settings, grace_seconds=grace_seconds)
