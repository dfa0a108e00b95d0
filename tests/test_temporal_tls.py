"""The services' link to Temporal over TLS and mTLS, for real.

`temporal server start-dev` serves plaintext only (it has no TLS flags), so the
tests put a TLS-terminating proxy in front of it: the services speak real TLS
(and present a real client certificate) to the proxy, which forwards the
decrypted bytes to the dev server. The API key is only checked to be handed to
the SDK: no server here verifies one."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import TLSConfig

from tenantry.settings import ApiSettings, TemporalTlsSettings, WorkerSettings
from tenantry.temporal_connection import connect, connect_options
from tenantry.v1 import operation_pb2
from tenantry_dev.embedded import free_port
from tests.stack import (
    api_channel,
    auth_env,
    registration,
    service_env,
    spawn,
    spawn_api,
    stopping,
    stubs_for,
    wait_done,
    wait_serving,
)

SERVER_NAME = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    root: Path
    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts nothing the proxy presents


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("temporal-pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert(SERVER_NAME)
    client = client_ca.issue_cert("worker.tenantry.test", common_name="worker.tenantry.test")
    server_ca.cert_pem.write_to_path(str(root / "server-ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    server.private_key_pem.write_to_path(str(root / "server-key.pem"))
    client_ca.cert_pem.write_to_path(str(root / "client-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(root / "client-cert.pem"))
    client.private_key_pem.write_to_path(str(root / "client-key.pem"))
    other_ca.cert_pem.write_to_path(str(root / "other-ca.pem"))
    return Pki(
        root=root,
        server_ca=root / "server-ca.pem",
        server_cert=root / "server.pem",
        server_key=root / "server-key.pem",
        client_ca=root / "client-ca.pem",
        client_cert=root / "client-cert.pem",
        client_key=root / "client-key.pem",
        other_ca=root / "other-ca.pem",
    )


@dataclass
class TlsProxy:
    address: str
    # The subject common name of every client certificate presented (mTLS).
    client_names: list[str] = field(default_factory=list)
    handshakes: int = 0


@contextlib.asynccontextmanager
async def tls_proxy(pki: Pki, upstream: str, *, mutual: bool) -> AsyncIterator[TlsProxy]:
    """TLS (mTLS when `mutual`) on a free port, plaintext to `upstream`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert)
    context.set_alpn_protocols(["h2"])
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.client_ca)
    host, _, port = upstream.rpartition(":")
    proxy = TlsProxy(address=f"{SERVER_NAME}:{free_port()}")
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        proxy.handshakes += 1
        peer = client_writer.get_extra_info("peercert")
        if peer:
            proxy.client_names.extend(value for rdn in peer["subject"] for key, value in rdn if key == "commonName")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        for task in (pump(client_reader, upstream_writer), pump(upstream_reader, client_writer)):
            running = asyncio.ensure_future(task)
            pumps.add(running)
            running.add_done_callback(pumps.discard)

    server = await asyncio.start_server(handle, SERVER_NAME, int(proxy.address.rpartition(":")[2]), ssl=context)
    try:
        yield proxy
    finally:
        server.close()
        for running in list(pumps):
            running.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def _temporal_address(client: Client) -> str:
    return client.service_client.config.target_host


def _env(address: str, **temporal_tls: Path | str) -> dict[str, str]:
    names = {
        "ca": "TENANTRY_TEMPORAL_TLS_CA_FILE",
        "cert": "TENANTRY_TEMPORAL_TLS_CERT_FILE",
        "key": "TENANTRY_TEMPORAL_TLS_KEY_FILE",
        "api_key": "TENANTRY_TEMPORAL_API_KEY",
    }
    return {
        "TENANTRY_DATABASE_URL": "postgresql+asyncpg://tenantry@127.0.0.1:1/tenantry",
        "TENANTRY_TEMPORAL_ADDRESS": address,
        **auth_env(),
        **{names[k]: str(v) for k, v in temporal_tls.items()},
    }


# --- settings into Client.connect arguments ---------------------------------------


def test_connect_options_from_settings(pki: Pki) -> None:
    plain = WorkerSettings.from_env(_env("temporal:7233"))
    assert connect_options(plain) == {
        "target_host": "temporal:7233",
        "namespace": "default",
        "tls": False,
        "api_key": None,
    }
    mutual = WorkerSettings.from_env(_env("temporal:7233", ca=pki.server_ca, cert=pki.client_cert, key=pki.client_key))
    assert mutual.temporal_tls == TemporalTlsSettings(pki.server_ca, pki.client_cert, pki.client_key)
    assert connect_options(mutual)["tls"] == TLSConfig(
        server_root_ca_cert=pki.server_ca.read_bytes(),
        client_cert=pki.client_cert.read_bytes(),
        client_private_key=pki.client_key.read_bytes(),
    )
    # Temporal Cloud with an API key: TLS against the system roots, the key sent.
    cloud = ApiSettings.from_env(_env("ns.acct.tmprl.cloud:7233", api_key="tk-secret-123"))
    options = connect_options(cloud)
    assert options["tls"] == TLSConfig() and options["api_key"] == "tk-secret-123"
    assert "tk-secret-123" not in repr(cloud)
    # A CA alone: server-verified TLS, no client certificate.
    ca_only = connect_options(ApiSettings.from_env(_env("temporal:7233", ca=pki.server_ca)))
    assert ca_only["tls"] == TLSConfig(server_root_ca_cert=pki.server_ca.read_bytes())


# --- real TLS ---------------------------------------------------------------------------


async def test_client_over_tls_and_mtls(pki: Pki, temporal_client: Client) -> None:
    upstream = _temporal_address(temporal_client)
    async with tls_proxy(pki, upstream, mutual=False) as proxy:
        settings = WorkerSettings.from_env(_env(proxy.address, ca=pki.server_ca))
        client = await connect(settings)
        assert (await client.workflow_service.get_system_info(GetSystemInfoRequest())).server_version
        assert proxy.handshakes >= 1

        # A CA that did not sign the server's certificate: refused, saying why.
        wrong_ca = WorkerSettings.from_env(_env(proxy.address, ca=pki.other_ca))
        with pytest.raises(RuntimeError, match=r"(?i)certificate|tls|handshake|unknown ?issuer"):
            await connect(wrong_ca)

    async with tls_proxy(pki, upstream, mutual=True) as proxy:
        mutual = WorkerSettings.from_env(
            _env(proxy.address, ca=pki.server_ca, cert=pki.client_cert, key=pki.client_key)
        )
        client = await connect(mutual)
        assert (await client.workflow_service.get_system_info(GetSystemInfoRequest())).server_version
        assert proxy.client_names and set(proxy.client_names) == {"worker.tenantry.test"}

        # Without a client certificate the mTLS endpoint refuses the connection.
        without_cert = WorkerSettings.from_env(_env(proxy.address, ca=pki.server_ca))
        with pytest.raises(RuntimeError):
            await connect(without_cert)


async def test_tls_client_against_the_plaintext_dev_server_fails_clearly(
    pki: Pki, database_url: str, temporal_client: Client
) -> None:
    address = _temporal_address(temporal_client)
    settings = WorkerSettings.from_env(_env(address, ca=pki.server_ca))
    with pytest.raises(RuntimeError, match="Failed client connect"):
        await connect(settings)
    # The worker process: one line naming the address and that it tried TLS, exit 1.
    env = service_env(
        database_url,
        address,
        f"tls-{uuid.uuid4().hex[:8]}",
        TENANTRY_TEMPORAL_TLS_CA_FILE=str(pki.server_ca),
        TENANTRY_WORKER_LIVENESS_FILE=tempfile.mktemp(),
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "provisioner_worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("provisioner-worker:")]
    assert len(lines) == 1, result.stderr
    assert f"cannot reach Temporal at {address} over TLS" in lines[0]


async def test_both_services_provision_a_tenant_over_mtls(pki: Pki, database_url: str, temporal_client: Client) -> None:
    """The real console entry points, configured only through the environment:
    the worker and the API reach Temporal through the mTLS endpoint and a
    tenant registered through the API gets provisioned."""
    async with tls_proxy(pki, _temporal_address(temporal_client), mutual=True) as proxy:
        env = service_env(
            database_url,
            proxy.address,
            f"tls-{uuid.uuid4().hex[:8]}",
            TENANTRY_TEMPORAL_TLS_CA_FILE=str(pki.server_ca),
            TENANTRY_TEMPORAL_TLS_CERT_FILE=str(pki.client_cert),
            TENANTRY_TEMPORAL_TLS_KEY_FILE=str(pki.client_key),
        )
        worker = spawn("worker", "provisioner_worker", {**env, "TENANTRY_WORKER_LIVENESS_FILE": tempfile.mktemp()})
        api = spawn_api(env)
        with stopping(worker, api):
            await wait_serving(api)
            async with api_channel(api.address) as channel:
                stubs = stubs_for(channel)
                registered = await stubs.tenants.RegisterTenant(registration(), timeout=30)
                done = await wait_done(stubs, registered.operation.name, timeout=90)
            assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done
        # Both processes connected through the proxy with the client certificate.
        assert proxy.handshakes >= 2
        assert set(proxy.client_names) == {"worker.tenantry.test"}
