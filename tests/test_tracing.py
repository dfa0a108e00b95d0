"""OpenTelemetry: one RegisterTenant is one trace from the API's RPC span
through the workflow start, the workflow and its activities down to SQL; the
operation records that trace id; log lines inside the call carry it. The
tracer provider exports to the SDK's in-memory exporter, installed in this
process for an API and a worker on their own task queue (the real stack)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from alembic import command
from alembic.config import Config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio.client import Client

from tenantry import tracing
from tenantry.db.engine import create_engine
from tenantry.migrations import migrations_dir
from tenantry.observability import JsonFormatter
from tenantry.schema_names import schema_name_for
from tenantry.v1 import operation_pb2, operation_service_pb2, tenant_service_pb2
from tests.stack import (
    Stack,
    api_channel,
    by_id,
    eventually,
    expect_error,
    registration,
    running_stack,
    service_env,
    spawn,
    spawn_api,
    stopping,
    stubs_for,
    wait_done,
    wait_serving,
)

REGISTER_SPAN = "tenantry.v1.TenantService/RegisterTenant"


@dataclass
class Traced:
    stack: Stack
    exporter: InMemorySpanExporter

    def spans_of(self, trace_id: int) -> list[ReadableSpan]:
        return [
            s for s in self.exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
        ]

    def server_span(self, name: str) -> ReadableSpan:
        matching = [s for s in self.exporter.get_finished_spans() if s.name == name and s.kind == SpanKind.SERVER]
        assert len(matching) == 1, [s.name for s in self.exporter.get_finished_spans()]
        return matching[0]


@asynccontextmanager
async def traced_stack(database_url: str, temporal_client: Client) -> AsyncIterator[Traced]:
    """This process traces into an in-memory exporter while an API and a worker
    made now (engine, Temporal client with the tracing interceptor) run."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        engine = create_engine(database_url)  # instrumented: tracing is on
        client = Client(
            temporal_client.service_client,
            namespace=temporal_client.namespace,
            interceptors=tracing.temporal_interceptors(),
        )
        try:
            async with running_stack(engine=engine, client=client) as stack:
                yield Traced(stack, exporter)
        finally:
            await engine.dispose()
    finally:
        tracing.uninstall()
        provider.shutdown()


@asynccontextmanager
async def captured_json_logs(logger_name: str) -> AsyncIterator[io.StringIO]:
    """What `logger_name` writes at INFO, as the services' JSON lines."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_one_registration_is_one_trace_from_rpc_to_sql(database_url: str, temporal_client: Client) -> None:
    async with traced_stack(database_url, temporal_client) as traced:
        stubs = traced.stack.stubs
        async with captured_json_logs("tenant_api.rpc") as lines:
            response = await stubs.tenants.RegisterTenant(registration(), timeout=30)
        operation = await wait_done(stubs, response.operation.name)
        assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation

        api_span = traced.server_span(REGISTER_SPAN)
        assert api_span.context is not None
        assert api_span.parent is None  # the client sent no traceparent: the API starts the trace
        trace_id = api_span.context.trace_id

        def names() -> set[str]:
            return {span.name for span in traced.spans_of(trace_id)}

        async def workflow_and_activity_traced() -> bool:
            found = names()
            return any(n.startswith("RunWorkflow:") for n in found) and any(n.startswith("RunActivity:") for n in found)

        await eventually(workflow_and_activity_traced, timeout=30)
        spans = traced.spans_of(trace_id)
        found = names()
        assert any(n.startswith("StartWorkflow:") for n in found), found
        assert "RunActivity:provision_tenant" in found, found
        # No stray traces: the workflow start, the workflow and the activities
        # all joined the RPC's trace, under the RPC span.
        start = next(s for s in spans if s.name.startswith("StartWorkflow:"))
        assert start.parent is not None and start.parent.span_id == api_span.context.span_id
        sql = [s for s in spans if s.kind == SpanKind.CLIENT and s.attributes and "db.query.text" in s.attributes]
        assert sql, found
        # SQL under the RPC (registration's statement) and under the activity (provisioning).
        by_id_ = {s.context.span_id: s for s in spans if s.context is not None}
        parents = {by_id_[s.parent.span_id].name for s in sql if s.parent is not None and s.parent.span_id in by_id_}
        assert REGISTER_SPAN in parents, parents
        assert "RunActivity:provision_tenant" in parents, parents

        # GetOperation leads to the trace.
        got = await stubs.operations.GetOperation(
            operation_service_pb2.GetOperationRequest(name=response.operation.name), timeout=10
        )
        assert got.operation.trace_id == format_trace_id(trace_id)
        assert response.operation.trace_id == format_trace_id(trace_id)

        # The access log's line for the call carries the trace and the RPC span.
        records = [json.loads(line) for line in lines.getvalue().splitlines()]
        register_lines = [r for r in records if r.get("rpc_method") == "/" + REGISTER_SPAN]
        assert len(register_lines) == 1, records
        assert register_lines[0]["trace_id"] == format_trace_id(trace_id)
        assert register_lines[0]["span_id"] == format_span_id(api_span.context.span_id)


async def test_an_incoming_traceparent_is_continued(database_url: str, temporal_client: Client) -> None:
    async with traced_stack(database_url, temporal_client) as traced:
        caller_trace, caller_span = uuid.uuid4().int, uuid.uuid4().int >> 64
        traceparent = f"00-{format_trace_id(caller_trace)}-{format_span_id(caller_span)}-01"
        request = tenant_service_pb2.GetTenantRequest(tenant_id=str(uuid.uuid4()))
        metadata = (*by_id(request.tenant_id), ("traceparent", traceparent))
        await expect_error(
            traced.stack.stubs.tenants.GetTenant(request, metadata=metadata, timeout=10),
            grpc.StatusCode.NOT_FOUND,
            "TENANT_NOT_FOUND",
        )
        span = traced.server_span("tenantry.v1.TenantService/GetTenant")
        assert span.context is not None and span.context.trace_id == caller_trace
        assert span.parent is not None and span.parent.span_id == caller_span
        # NOT_FOUND is the caller's problem, not a server error.
        assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 5
        assert span.status.is_ok
        # Health checks (probes) are not traced.
        health_stub = health_pb2_grpc.HealthStub(traced.stack.channel)
        await health_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert not [s for s in traced.exporter.get_finished_spans() if s.name.startswith("grpc.health")]


async def test_without_tracing_an_operation_has_no_trace_id(stack: Stack) -> None:
    assert tracing.tracer() is None
    response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
    assert response.operation.trace_id == ""
    got = await stack.stubs.operations.GetOperation(
        operation_service_pb2.GetOperationRequest(name=response.operation.name), timeout=10
    )
    assert got.operation.trace_id == ""


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True),
    ],
)
def test_the_otel_environment_switches_tracing(env: Mapping[str, str], on: bool) -> None:
    assert tracing.enabled_by(env) is on


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_EXPORTER": "otlp,console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
)
def test_an_unsupported_otel_exporter_is_a_configuration_error(env: Mapping[str, str]) -> None:
    with pytest.raises(tracing.TracingConfigError):
        tracing.enabled_by(env)


# --- the control-plane migration ------------------------------------------------------


def _alembic(database_url: str, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir() / "control_plane"))
    config.attributes["database_url"] = database_url
    getattr(command, action)(config, revision)


async def test_migration_0006_gives_existing_operations_an_empty_trace_id(database_url: str) -> None:
    url = make_url(database_url)
    name = f"trace_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    isolated = url.set(database=name).render_as_string(hide_password=False)
    db = create_async_engine(isolated)
    try:
        await asyncio.to_thread(_alembic, isolated, "upgrade", "0004")
        tenant_id, user = uuid.uuid4(), uuid.uuid4()
        async with db.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (id, email, display_name) VALUES (:u, 'a@b.example.com', 'A')"), {"u": user}
            )
            await conn.execute(
                text(
                    "INSERT INTO tenants (id, slug, display_name, admin_user_id, state, schema_name) "
                    "VALUES (:id, 'before-traces', 'T', :u, 'CREATING', :schema)"
                ),
                {"id": tenant_id, "u": user, "schema": schema_name_for(tenant_id)},
            )
            await conn.execute(
                text(
                    "INSERT INTO workflow_executions (workflow_id, tenant_id, kind, state) "
                    "VALUES ('wf-before-traces', :id, 'PROVISION', 'PENDING')"
                ),
                {"id": tenant_id},
            )
        await asyncio.to_thread(_alembic, isolated, "upgrade", "head")
        async with db.connect() as conn:
            found = await conn.scalar(text("SELECT trace_id FROM workflow_executions"))
        assert found == ""
        await asyncio.to_thread(_alembic, isolated, "downgrade", "0004")
        async with db.connect() as conn:
            columns = await conn.scalars(
                text("SELECT column_name FROM information_schema.columns WHERE table_name = 'workflow_executions'")
            )
            assert "trace_id" not in set(columns)
        await asyncio.to_thread(_alembic, isolated, "upgrade", "head")
    finally:
        await db.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


# --- the services as processes, exporting over OTLP ---------------------------------


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: (service.name, span) of everything exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def otlp_collector() -> AsyncIterator[tuple[str, _Collector]]:
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        await server.stop(0)


async def test_the_services_export_one_trace_across_processes_over_otlp(
    database_url: str, temporal_client: Client
) -> None:
    async with otlp_collector() as (endpoint, collector):
        env = service_env(
            database_url,
            temporal_client.service_client.config.target_host,
            f"trace-{uuid.uuid4().hex[:8]}",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        api = spawn_api(env)
        worker = spawn("worker", "provisioner_worker", env)
        with stopping(api, worker):
            await wait_serving(api)
            async with api_channel(api.address) as channel:
                stubs = stubs_for(channel)
                response = await stubs.tenants.RegisterTenant(registration(), timeout=30)
                operation = await wait_done(stubs, response.operation.name)
            assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED, operation
            trace_id = response.operation.trace_id
            assert len(trace_id) == 32 and operation.trace_id == trace_id

            def in_trace() -> set[tuple[str, str]]:
                return {(service, span.name) for service, span in collector.spans if span.trace_id.hex() == trace_id}

            async def exported() -> bool:
                return {
                    ("tenant-api", REGISTER_SPAN),
                    ("provisioner-worker", "RunActivity:provision_tenant"),
                } <= in_trace()

            await eventually(exported, timeout=30)
            assert any(s == "tenant-api" and n.startswith("StartWorkflow:") for s, n in in_trace()), in_trace()
            assert any(s == "provisioner-worker" and n.startswith("RunWorkflow:") for s, n in in_trace()), in_trace()
            rpc_lines = [line for line in api.log_lines() if line.get("rpc_method") == "/" + REGISTER_SPAN]
            assert [line.get("trace_id") for line in rpc_lines] == [trace_id]


async def test_an_exporter_the_services_do_not_ship_is_a_configuration_error(
    database_url: str, temporal_client: Client
) -> None:
    env = service_env(
        database_url,
        temporal_client.service_client.config.target_host,
        f"trace-{uuid.uuid4().hex[:8]}",
        OTEL_TRACES_EXPORTER="zipkin",
    )
    api = spawn_api(env)
    with stopping(api):
        exit_code = await asyncio.to_thread(api.process.wait, 30)
    assert exit_code == 2
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in api.log_tail()
