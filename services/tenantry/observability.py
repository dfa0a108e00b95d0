"""JSON-lines logging with per-request context, and the Prometheus endpoint."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from prometheus_client import Gauge, start_http_server
from temporalio import activity

from tenantry.tracing import current_log_fields

# Both services report it (a test process imports both: one definition).
SHARD_UP = Gauge(
    "tenantry_shard_up",
    "1 while this process last reached the shard's database (the API probes every 2 s, the worker at each "
    "reconciliation), 0 while it could not",
    ["shard"],
)

# Fields every log line of the current request (or workflow step) carries.
log_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039 - never mutated

# One encoder for every line (json.dumps with options builds one per call).
_encode = json.JSONEncoder(default=str).encode

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        # Lines come many per second: the date part is formatted once a second.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
            **log_context.get(),
        }
        ids = current_log_fields()
        if ids is not None:
            entry.update(ids)
        if activity.in_activity():
            info = activity.info()
            entry.update(workflow_id=info.workflow_id, activity=info.activity_type, attempt=info.attempt)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


def configure_logging(service: str, level: int = logging.INFO) -> None:
    # The JSON lines carry none of these, and gathering them (the caller's
    # frame above all) is much of what a log record costs: see "Optimization"
    # in the logging HOWTO. The access log writes one record per RPC.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every tenant upgrade at INFO; keep its warnings only.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def serve_metrics(address: str | None) -> None:
    """Prometheus text endpoint at http://<address>/metrics (None: off)."""
    if address is None:
        return
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host)
