"""What both services do at start: JSON logs, their settings (one line and
exit 2 if malformed), tracing (from the OTEL_* environment, see
tenantry.tracing) and their Prometheus endpoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from tenantry.observability import configure_logging, serve_metrics
from tenantry.settings import CommonSettings, Env, exit_with_config_error, load_or_exit
from tenantry.tracing import TracingConfigError
from tenantry.tracing import configure_from_env as configure_tracing

S = TypeVar("S", bound=CommonSettings)


def start_process(service: str, read_settings: Callable[[Env], S]) -> S:
    """`read_settings` is the service's `from_env` (ApiSettings, WorkerSettings)."""
    configure_logging(service)
    settings = load_or_exit(read_settings)
    try:
        # Before any engine or Temporal client is made: they are traced from their creation.
        configure_tracing(service, os.environ)
    except TracingConfigError as exc:
        exit_with_config_error(str(exc))
    try:
        serve_metrics(settings.metrics_address)
    except OSError as exc:
        print(f"{service}: cannot serve metrics on {settings.metrics_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings
