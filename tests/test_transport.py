"""TLS, mTLS and the loopback-only plaintext rule (design: "Who may call what" ->
Transport). Real servers: the API in-process on 127.0.0.1:0 and tenant-api as
a subprocess; certificates from throwaway trustme CAs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api import healthcheck
from tenant_api.server import RunningApi, start_api
from tenant_api.transport import is_loopback_host, listen_credentials, load_server_credentials
from tenantry.settings import SettingsError, TlsSettings
from tenantry_dev.embedded import BIN_DIR, free_port
from tests.stack import (
    BUG_CODES,
    ServiceProcess,
    auth_env,
    eventually,
    page_tokens_for_tests,
    service_env,
    spawn,
    stopping,
    verifier_for_tests,
)

SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Pki:
    """A server certificate, a client CA, and a client certificate it signed, as files."""

    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA the server does not trust
    stranger_key: Path

    def server_env(self, *, mutual: bool = False) -> dict[str, str]:
        env = {"TENANTRY_TLS_CERT_FILE": str(self.server_cert), "TENANTRY_TLS_KEY_FILE": str(self.server_key)}
        if mutual:
            env["TENANTRY_TLS_CLIENT_CA_FILE"] = str(self.client_ca)
        return env


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert(SERVER_NAME)
    client = client_ca.issue_cert("client.tenantry.test")
    stranger = stranger_ca.issue_cert("stranger.tenantry.test")
    server_ca.cert_pem.write_to_path(str(root / "server-ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(root / "server-cert.pem"))
    server.private_key_pem.write_to_path(str(root / "server-key.pem"))
    client_ca.cert_pem.write_to_path(str(root / "client-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(root / "client-cert.pem"))
    client.private_key_pem.write_to_path(str(root / "client-key.pem"))
    stranger.cert_chain_pems[0].write_to_path(str(root / "stranger-cert.pem"))
    stranger.private_key_pem.write_to_path(str(root / "stranger-key.pem"))
    return Pki(
        server_ca=root / "server-ca.pem",
        server_cert=root / "server-cert.pem",
        server_key=root / "server-key.pem",
        client_ca=root / "client-ca.pem",
        client_cert=root / "client-cert.pem",
        client_key=root / "client-key.pem",
        stranger_cert=root / "stranger-cert.pem",
        stranger_key=root / "stranger-key.pem",
    )


def _channel_credentials(pki: Pki, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.server_ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def _secure_channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _health(channel)
    code = raised.value.code()
    assert code not in BUG_CODES
    return code


@pytest.fixture
async def api_factory() -> AsyncIterator[list[RunningApi]]:
    """In-process APIs a test started; stopped when it ends, pass or fail."""
    started: list[RunningApi] = []
    yield started
    for api in started:
        await api.stop(0)


async def _start(
    started: list[RunningApi],
    engine: AsyncEngine,
    client: Client,
    credentials: grpc.ServerCredentials | None,
) -> RunningApi:
    api = await start_api(
        engine=engine,
        client=client,
        task_queue=f"tls-{uuid.uuid4().hex[:8]}",
        address="127.0.0.1:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens_for_tests(),
        credentials=credentials,
    )
    started.append(api)
    return api


def _healthcheck_env(port: int, **extra: str) -> dict[str, str]:
    return {"TENANTRY_GRPC_ADDRESS": f"0.0.0.0:{port}", **extra}


# --- TLS ------------------------------------------------------------------------


async def test_tls_health_check_with_the_ca_and_plaintext_client_refused(
    pki: Pki, api_factory: list[RunningApi], engine: AsyncEngine, temporal_client: Client
) -> None:
    credentials = listen_credentials("127.0.0.1:0", TlsSettings.from_env(pki.server_env()))
    assert credentials is not None
    api = await _start(api_factory, engine, temporal_client, credentials)

    async with _secure_channel(api.port, _channel_credentials(pki)) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING

    assert await _refused(grpc.aio.insecure_channel(f"127.0.0.1:{api.port}")) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the server's CA is refused too.
    untrusted = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
    assert await _refused(_secure_channel(api.port, untrusted)) == grpc.StatusCode.UNAVAILABLE
    # And so is one that expects a name the certificate does not carry.
    wrong_name = grpc.aio.secure_channel(
        f"127.0.0.1:{api.port}",
        _channel_credentials(pki),
        options=[("grpc.ssl_target_name_override", "elsewhere.example")],
    )
    assert await _refused(wrong_name) == grpc.StatusCode.UNAVAILABLE

    # The container healthcheck, as the image runs it, but with TLS on.
    tls_env = {**pki.server_env(), "TENANTRY_HEALTHCHECK_CA_FILE": str(pki.server_ca)}
    assert await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port, **tls_env)) == 0
    # Without the CA it cannot verify the (private) server certificate: unhealthy, not a false pass.
    assert await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port, **pki.server_env())) == 1
    # The plaintext healthcheck cannot talk to a TLS port.
    assert await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port)) == 1


async def test_plaintext_on_loopback_and_healthcheck(
    api_factory: list[RunningApi], engine: AsyncEngine, temporal_client: Client
) -> None:
    credentials = listen_credentials("127.0.0.1:0", TlsSettings.from_env({}))
    assert credentials is None
    api = await _start(api_factory, engine, temporal_client, credentials)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port)) == 0


# --- mTLS -----------------------------------------------------------------------


async def test_mtls_requires_a_client_certificate_from_the_client_ca(
    pki: Pki, api_factory: list[RunningApi], engine: AsyncEngine, temporal_client: Client
) -> None:
    tls = TlsSettings.from_env(pki.server_env(mutual=True))
    assert tls.mutual
    api = await _start(api_factory, engine, temporal_client, load_server_credentials(tls))

    no_certificate = _secure_channel(api.port, _channel_credentials(pki))
    assert await _refused(no_certificate) == grpc.StatusCode.UNAVAILABLE
    stranger = _secure_channel(api.port, _channel_credentials(pki, pki.stranger_cert, pki.stranger_key))
    assert await _refused(stranger) == grpc.StatusCode.UNAVAILABLE
    assert await _refused(grpc.aio.insecure_channel(f"127.0.0.1:{api.port}")) == grpc.StatusCode.UNAVAILABLE

    async with _secure_channel(api.port, _channel_credentials(pki, pki.client_cert, pki.client_key)) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING

    mtls_env = {**pki.server_env(mutual=True), "TENANTRY_HEALTHCHECK_CA_FILE": str(pki.server_ca)}
    client = {
        "TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE": str(pki.client_cert),
        "TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE": str(pki.client_key),
    }
    assert await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port, **mtls_env, **client)) == 0
    # Under mTLS without a client certificate the probe is misconfigured: exit 2, like any setting.
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(healthcheck.main, _healthcheck_env(api.port, **mtls_env))
    assert exited.value.code == 2


# --- settings and the plaintext rule ----------------------------------------------


def test_tls_settings_from_the_environment(pki: Pki) -> None:
    assert TlsSettings.from_env({}) == TlsSettings()
    assert not TlsSettings.from_env({}).enabled
    full = TlsSettings.from_env({**pki.server_env(mutual=True), "TENANTRY_PLAINTEXT_BEHIND_PROXY": " TRUE "})
    assert full == TlsSettings(pki.server_cert, pki.server_key, pki.client_ca, plaintext_behind_proxy=True)
    assert full.enabled and full.mutual
    assert TlsSettings.from_env({"TENANTRY_PLAINTEXT_BEHIND_PROXY": "false"}).plaintext_behind_proxy is False
    assert TlsSettings.from_env({"TENANTRY_TLS_CERT_FILE": " ", "TENANTRY_TLS_KEY_FILE": ""}) == TlsSettings()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TENANTRY_TLS_CERT_FILE": "/x/cert.pem"}, "TENANTRY_TLS_KEY_FILE"),
        ({"TENANTRY_TLS_KEY_FILE": "/x/key.pem"}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CLIENT_CA_FILE": "/x/ca.pem"}, "TENANTRY_TLS_CLIENT_CA_FILE"),
        ({"TENANTRY_PLAINTEXT_BEHIND_PROXY": "maybe"}, "TENANTRY_PLAINTEXT_BEHIND_PROXY"),
    ],
)
def test_incomplete_tls_settings_are_named(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as raised:
        TlsSettings.from_env(env)
    assert variable in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("[::ffff:127.0.0.1]", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("192.168.1.20", False),
        ("10.0.0.5", False),
        ("[fe80::1]", False),
        ("[::ffff:10.0.0.1]", False),
        ("api.internal", False),
        ("localhost.example.com", False),
        ("128.0.0.1", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", "192.168.1.20:50051", "api.internal:50051"])
def test_plaintext_off_loopback_is_refused_unless_behind_a_proxy(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SettingsError) as raised:
        listen_credentials(address, TlsSettings())
    message = str(raised.value)
    assert "TENANTRY_GRPC_ADDRESS" in message and address in message and "\n" not in message
    assert "TENANTRY_PLAINTEXT_BEHIND_PROXY" in message and "TENANTRY_TLS_CERT_FILE" in message

    with caplog.at_level("WARNING"):
        assert listen_credentials(address, TlsSettings(plaintext_behind_proxy=True)) is None
    assert any("proxy" in record.getMessage() and record.levelname == "WARNING" for record in caplog.records)


def test_tls_anywhere_is_allowed(pki: Pki) -> None:
    assert listen_credentials("0.0.0.0:50051", TlsSettings.from_env(pki.server_env())) is not None
    assert listen_credentials("[::]:50051", TlsSettings.from_env(pki.server_env(mutual=True))) is not None


def _bad_files(pki: Pki, root: Path) -> list[tuple[dict[str, str], str]]:
    garbage = root / "garbage.pem"
    garbage.write_text("not a certificate\n")
    empty = root / "empty.pem"
    empty.write_text("")
    binary = root / "binary.der"
    binary.write_bytes(bytes(range(256)))
    unreadable = root / "unreadable.pem"
    unreadable.write_bytes(pki.server_key.read_bytes())
    unreadable.chmod(0)
    missing = str(root / "missing.pem")
    cert, key = str(pki.server_cert), str(pki.server_key)
    cases = [
        ({"TENANTRY_TLS_CERT_FILE": missing, "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": cert, "TENANTRY_TLS_KEY_FILE": missing}, "TENANTRY_TLS_KEY_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": str(root), "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": str(garbage), "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": str(empty), "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": str(binary), "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": key, "TENANTRY_TLS_KEY_FILE": key}, "TENANTRY_TLS_CERT_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": cert, "TENANTRY_TLS_KEY_FILE": str(garbage)}, "TENANTRY_TLS_KEY_FILE"),
        ({"TENANTRY_TLS_CERT_FILE": cert, "TENANTRY_TLS_KEY_FILE": cert}, "TENANTRY_TLS_KEY_FILE"),
        # A key that does not belong to the certificate.
        ({"TENANTRY_TLS_CERT_FILE": cert, "TENANTRY_TLS_KEY_FILE": str(pki.client_key)}, "TENANTRY_TLS_KEY_FILE"),
        ({**pki.server_env(), "TENANTRY_TLS_CLIENT_CA_FILE": str(garbage)}, "TENANTRY_TLS_CLIENT_CA_FILE"),
        ({**pki.server_env(), "TENANTRY_TLS_CLIENT_CA_FILE": missing}, "TENANTRY_TLS_CLIENT_CA_FILE"),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        cases.append(
            ({"TENANTRY_TLS_CERT_FILE": cert, "TENANTRY_TLS_KEY_FILE": str(unreadable)}, "TENANTRY_TLS_KEY_FILE")
        )
    return cases


def test_bad_certificate_files_are_named(pki: Pki, tmp_path: Path) -> None:
    for env, variable in _bad_files(pki, tmp_path):
        with pytest.raises(SettingsError) as raised:
            listen_credentials("127.0.0.1:50051", TlsSettings.from_env(env))
        message = str(raised.value)
        assert variable in message, (env, message)
        assert "\n" not in message
        assert "PRIVATE KEY" not in message


# --- the real console script ----------------------------------------------------


def _base_env(**extra: str) -> dict[str, str]:
    env = {"PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": os.environ.get("HOME", "/tmp")}
    env.update(
        TENANTRY_DATABASE_URL="postgresql+asyncpg://tenantry:secret@127.0.0.1:1/tenantry",
        TENANTRY_TEMPORAL_ADDRESS="127.0.0.1:1",
        TENANTRY_METRICS_ADDRESS="off",
        **auth_env(),
    )
    env.update(extra)
    return env


def _run_api(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "tenant-api")],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    assert "Traceback" not in result.stdout + result.stderr, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_tenant_api_refuses_plaintext_off_loopback(host: str) -> None:
    address = f"{host}:{free_port()}"
    result = _run_api(_base_env(TENANTRY_GRPC_ADDRESS=address))
    _assert_one_line_exit_2(result, "TENANTRY_GRPC_ADDRESS", address, "TENANTRY_PLAINTEXT_BEHIND_PROXY")


def test_tenant_api_names_a_bad_certificate_file(pki: Pki, tmp_path: Path) -> None:
    env = _base_env(
        TENANTRY_GRPC_ADDRESS=f"0.0.0.0:{free_port()}",
        TENANTRY_TLS_CERT_FILE=str(tmp_path / "missing.pem"),
        TENANTRY_TLS_KEY_FILE=str(pki.server_key),
    )
    _assert_one_line_exit_2(_run_api(env), "TENANTRY_TLS_CERT_FILE")
    env.update(TENANTRY_TLS_CERT_FILE=str(pki.server_cert), TENANTRY_TLS_KEY_FILE=str(pki.client_key))
    _assert_one_line_exit_2(_run_api(env), "TENANTRY_TLS_KEY_FILE")


def _temporal_address(client: Client) -> str:
    return client.service_client.config.target_host


async def _wait_healthy(service: ServiceProcess, env: Mapping[str, str]) -> None:
    """Polls with the container healthcheck itself (plaintext or TLS, as env says)."""

    async def healthy() -> bool:
        if service.process.poll() is not None:
            output = await asyncio.to_thread(service.log_path.read_text)
            raise AssertionError(f"{service.name} exited with {service.process.returncode}: {output[-2000:]}")
        return await asyncio.to_thread(healthcheck.main, env) == 0

    await eventually(healthy, timeout=30)


async def test_tenant_api_behind_a_proxy_serves_plaintext_on_all_interfaces_and_warns(
    database_url: str, temporal_client: Client
) -> None:
    port = free_port()
    env = service_env(
        database_url,
        _temporal_address(temporal_client),
        f"tls-{uuid.uuid4().hex[:8]}",
        TENANTRY_GRPC_ADDRESS=f"0.0.0.0:{port}",
        TENANTRY_PLAINTEXT_BEHIND_PROXY="true",
    )
    api = spawn("api", "tenant_api", env)
    with stopping(api):
        await _wait_healthy(api, env)
        warnings = [line for line in api.log_lines() if line.get("level") == "warning"]
        assert any("proxy" in line["message"] and f"0.0.0.0:{port}" in line["message"] for line in warnings), (
            api.log_path.read_text()
        )
        assert api.stop() == 0


async def test_tenant_api_over_tls_on_all_interfaces_passes_the_container_healthcheck(
    pki: Pki, database_url: str, temporal_client: Client
) -> None:
    port = free_port()
    env = service_env(
        database_url,
        _temporal_address(temporal_client),
        f"tls-{uuid.uuid4().hex[:8]}",
        TENANTRY_GRPC_ADDRESS=f"0.0.0.0:{port}",
        TENANTRY_HEALTHCHECK_CA_FILE=str(pki.server_ca),
        **pki.server_env(),
    )
    api = spawn("api", "tenant_api", env)
    with stopping(api):
        await _wait_healthy(api, env)
        # The healthcheck exactly as the Dockerfile's HEALTHCHECK runs it.
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tenant_api.healthcheck"], env=env, capture_output=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert not any(line.get("level") == "warning" for line in api.log_lines())
        assert api.stop() == 0
