"""What both services do at start: JSON logs, their settings (one line and
exit 2 if malformed) and their Prometheus endpoint."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from tenantry.observability import configure_logging, serve_metrics
from tenantry.settings import CommonSettings, Env, load_or_exit

S = TypeVar("S", bound=CommonSettings)


def start_process(service: str, read_settings: Callable[[Env], S]) -> S:
    """`read_settings` is the service's `from_env` (ApiSettings, WorkerSettings)."""
    configure_logging(service)
    settings = load_or_exit(read_settings)
    try:
        serve_metrics(settings.metrics_address)
    except OSError as exc:
        print(f"{service}: cannot serve metrics on {settings.metrics_address}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings
