"""OpenTelemetry tracing: off unless an exporter is configured, and then one
trace per request across the API, Temporal and the worker.

The switch is the standard OTEL_* environment only (no TENANTRY_* variable):

- `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`: off.
- `OTEL_TRACES_EXPORTER=otlp`: on (OTLP over gRPC; endpoint from the
  `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, default `localhost:4317`).
- `OTEL_TRACES_EXPORTER` unset: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, off otherwise (the default).
- Any other exporter, or `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` other than
  `grpc`: a configuration error (the services ship the gRPC OTLP exporter only).

Everything else (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*` headers, TLS,
timeouts, `OTEL_PROPAGATORS`) is read by the SDK itself.

When off, nothing that costs per call is installed: the API has no tracing
interceptor, the Temporal client no tracing interceptor, engines no SQL hooks;
log lines skip the trace lookup, and operations record an empty trace id.

When on, `install` makes this process trace with a provider:
- the API's calls each get a SERVER span (`tenant_api.interceptors.tracing`),
  continuing an incoming W3C `traceparent`;
- the Temporal client (and so the worker built on it) carries the context into
  workflow starts, workflows and activities (temporalio's TracingInterceptor);
- statements run through SQLAlchemy get a CLIENT span each (`instrument_engine`;
  the tenant gate's admission runs on the driver directly and has none);
- JSON log lines carry `trace_id` and `span_id`;
- an operation records the trace id of the request that created it
  (`Operation.trace_id` in the API).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id

if TYPE_CHECKING:
    import temporalio.client
    from sqlalchemy.ext.asyncio import AsyncEngine

# The tracer this process traces with; None: tracing is off.
_tracer: trace.Tracer | None = None

INSTRUMENTATION_NAME = "tenantry"


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something the services cannot do."""


def enabled_by(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* environment turns tracing on (see the module doc)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter not in ("", "otlp"):
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported: use 'otlp' or 'none'")
    on = exporter == "otlp" or bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if on:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name, "").strip().lower()
            if protocol not in ("", "grpc"):
                raise TracingConfigError(f"{name}={protocol!r} is not supported: the services export OTLP over gRPC")
    return on


def configure_from_env(service: str, env: Mapping[str, str]) -> bool:
    """Turns tracing on for this process when the environment says so: an
    OTLP exporter behind a batch processor, the global tracer provider, and
    `install`. Returns whether it did. Raises TracingConfigError."""
    if not enabled_by(env):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME, when set, wins over the process's own name.
    resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service})
    provider = TracerProvider(resource=resource)  # flushes at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def install(provider: trace.TracerProvider) -> None:
    """Traces this process's API calls, Temporal clients and engines created
    from now on with `provider` (tests install one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME)


def uninstall() -> None:
    """Tracing off again for what is created from now on (tests)."""
    global _tracer
    _tracer = None


def tracer() -> trace.Tracer | None:
    """The process's tracer; None when tracing is off."""
    return _tracer


def current_trace_id() -> str:
    """The current trace's id (32 hex digits); "" when tracing is off or no span is current."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else ""


def current_log_fields() -> dict[str, str] | None:
    """`trace_id` and `span_id` of the current span, for log lines; None when
    tracing is off or no span is current."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": format_trace_id(context.trace_id), "span_id": format_span_id(context.span_id)}


def temporal_interceptors() -> list[temporalio.client.Interceptor]:
    """For `Client.connect`: temporalio's TracingInterceptor when tracing is
    on, which a worker built on the client uses too (workflow and activity spans)."""
    if _tracer is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(_tracer)]


# --- SQL spans -----------------------------------------------------------------

_SPAN_KEY = "_tenantry_span"


def instrument_engine(engine: AsyncEngine) -> None:
    """A CLIENT span per statement the engine runs, when tracing is on. Our
    own three engine events rather than opentelemetry-instrumentation-sqlalchemy,
    which does not support SQLAlchemy 2.1 (and brings wrapt and the
    instrumentation framework). The statement text is recorded, never the
    parameters."""
    current = _tracer
    if current is None:
        return
    from sqlalchemy import event

    sync_engine = engine.sync_engine
    database = sync_engine.url.database or ""

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        span = current.start_span(
            f"{operation} {database}".strip(),
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.system": "postgresql",
                "db.namespace": database,
                "db.operation.name": operation,
                "db.query.text": statement,
            },
        )
        if context is not None:
            setattr(context, _SPAN_KEY, span)

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        span = getattr(context, _SPAN_KEY, None)
        if span is not None:
            span.end()

    def failed(exception_context: Any) -> None:
        span = getattr(exception_context.execution_context, _SPAN_KEY, None)
        if span is not None:
            error = exception_context.original_exception
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute("error.type", type(error).__name__)
            span.end()

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)
