"""Running tenant-api / provisioner-worker as real OS processes in tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.stack import BIN_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def service_env(database_url: str, temporal_address: str, task_queue: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TENANTRY_DATABASE_URL": database_url,
        "TENANTRY_TEMPORAL_ADDRESS": temporal_address,
        "TENANTRY_TASK_QUEUE": task_queue,
        "TENANTRY_METRICS_ADDRESS": "off",
        "TENANTRY_SDK_METRICS_ADDRESS": "off",
    }
    env.update(extra)
    return env


def spawn(name: str, module: str, env: dict[str, str], log_dir: Path | None = None) -> ServiceProcess:
    directory = log_dir or Path(tempfile.mkdtemp(prefix="tenantry-proc-"))
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return ServiceProcess(name=name, process=process, log_path=log_path)


def spawn_api(env: dict[str, str], log_dir: Path | None = None, name: str = "api") -> ServiceProcess:
    address = f"127.0.0.1:{free_port()}"
    service = spawn(name, "tenant_api", {**env, "TENANTRY_GRPC_ADDRESS": address}, log_dir)
    service.address = address
    return service


async def wait_serving(service: ServiceProcess, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if service.process.poll() is not None:
                raise AssertionError(f"{service.name} exited: {service.log_path.read_text()[-2000:]}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() > deadline:
                raise AssertionError(f"{service.name} not serving after {timeout}s")
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def stopping(*services: ServiceProcess) -> Iterator[None]:
    """Kills whatever is still running when the block exits, pass or fail."""
    try:
        yield
    finally:
        for service in services:
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(10)
