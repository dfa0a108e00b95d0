"""`python -m bench.tracing_cost [--smoke] [--traced]`: what tracing costs the
API's reads, without the whole benchmark.

Starts the benchmark's stack (bench.stack) once, runs the warmup and scenario
2 (ListProjects and GetProject through the full chain vs the bare API, in
alternating rounds) plus GetTenant at the read concurrencies, prints the p50s
and ratios as JSON, and stops everything. With `--traced` the stack's services
export traces over OTLP/gRPC (OTEL_EXPORTER_OTLP_ENDPOINT) to a sink in a
process of its own (`--sink ADDRESS` runs that sink: it accepts and counts
spans); without it, no OTEL_* variable is set, which is the product's default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, cast

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.config import FULL, SMOKE, BenchConfig
from bench.scenarios import RPC_TIMEOUT, Bench, _measure, scenario_reads, warmup
from bench.stack import BenchStack
from bench.stats import progress
from tenantry.v1 import tenant_service_pb2
from tenantry_dev.embedded import free_port


@dataclass
class _TracedStack(BenchStack):
    otlp_endpoint: str = ""

    def service_env(self) -> dict[str, str]:
        env = super().service_env()
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        return env


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve_sink(address: str) -> None:
    sink = _Sink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(json.dumps({"spans_received": sink.spans}), flush=True)
    await server.stop(0)


def _p50s(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "concurrency": row["concurrency"],
            "with_gate_p50_ms": row["with_gate"].get("p50_ms"),
            "bare_p50_ms": row["without_interceptors"].get("p50_ms"),
            "ratio_p50": row["ratio_p50"],
            "api_cpu_ms_per_op": row["with_gate"].get("cpu_ms_per_op", {}).get("tenant-api"),
        }
        for row in rows
    ]


async def run(config: BenchConfig, stack: BenchStack) -> dict[str, Any]:
    await stack.start()
    bench = await Bench.connect(config, stack)
    try:
        await warmup(bench)
        reads = await scenario_reads(bench)
        request = tenant_service_pb2.GetTenantRequest(tenant_id=reads["tenant_id"])

        async def get_tenant(_: int) -> None:
            await bench.tenants.GetTenant(request, timeout=RPC_TIMEOUT)

        get_tenant_rows = []
        for concurrency in config.read_concurrency:
            result = await _measure(bench, "GetTenant", get_tenant, concurrency, config.read_requests)
            summary = result.summary()
            get_tenant_rows.append(
                {
                    "concurrency": concurrency,
                    "p50_ms": summary.get("p50_ms"),
                    "p99_ms": summary.get("p99_ms"),
                    "api_cpu_ms_per_op": summary.get("cpu_ms_per_op", {}).get("tenant-api"),
                }
            )
        stack.check_alive()
        return {
            "ListProjects": _p50s(reads["rpcs"]["ListProjects"]),
            "GetProject": _p50s(reads["rpcs"]["GetProject"]),
            "GetTenant": get_tenant_rows,
        }
    finally:
        await bench.close()
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="the smoke run's request counts")
    parser.add_argument("--traced", action="store_true", help="the services export traces to a sink process")
    parser.add_argument("--sink", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        asyncio.run(serve_sink(args.sink))
        return 0
    stack = cast("_TracedStack", _TracedStack.create())  # create() builds `cls`
    sink: subprocess.Popen[str] | None = None
    if args.traced:
        address = f"127.0.0.1:{free_port()}"
        sink = subprocess.Popen(
            [sys.executable, "-m", "bench.tracing_cost", "--sink", address], stdout=subprocess.PIPE, text=True
        )
        stack.otlp_endpoint = f"http://{address}"
    progress(f"tracing cost: services {'export traces over OTLP' if args.traced else 'without OTEL_* (tracing off)'}")
    try:
        results = asyncio.run(run(SMOKE if args.smoke else FULL, stack))
    finally:
        stack.stop()
        if sink is not None:
            sink.send_signal(signal.SIGTERM)
            out, _ = sink.communicate(timeout=10)
            progress(f"sink: {out.strip()}")
    print(json.dumps({"traced": args.traced, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
