"""tenantry_client (the client distribution in client/) against the real
server: in-process API, real PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
import trustme
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from jwt import PyJWK
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from tenant_api.authentication import JwksKeys, TokenVerifier, keys_unavailable
from tenant_api.server import RunningApi, start_api
from tenantry.db.events import LAST_SEQUENCE
from tenantry_client import (
    AlreadyExists,
    AsyncTenantryClient,
    BearerToken,
    InvalidArgument,
    OperationFailed,
    ResourceExhausted,
    RetryPolicy,
    TenantryClient,
    Tls,
    Unauthenticated,
    Unavailable,
)
from tenantry_client.errors import error_from_rpc
from tenantry_client.v1 import event_service_pb2, operation_pb2, tenant_pb2, tenant_service_pb2
from tenantry_dev.embedded import free_port
from tests.stack import (
    ADMIN_TOKEN,
    TEST_AUTH,
    Stack,
    failing_provisioning_stack,
    page_tokens_for_tests,
    registration,
    token,
    verifier_for_tests,
)


def target(stack: Stack) -> str:
    return f"127.0.0.1:{stack.api.port}"


def slug() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncTenantryClient]:
    async with AsyncTenantryClient(target(stack), token=ADMIN_TOKEN, plaintext=True) as client:
        yield client


async def test_register_and_wait_returns_the_active_tenant(client: AsyncTenantryClient) -> None:
    name = slug()
    tenant = await client.register_and_wait(
        name, "Client Co", f"ops@{name}.example.com", "Ada Admin", labels={"team": "a"}
    )
    assert tenant.slug == name
    assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert dict(tenant.labels) == {"team": "a"}


async def test_a_taken_slug_is_a_typed_already_exists(client: AsyncTenantryClient) -> None:
    name = slug()
    await client.register_tenant(name, "First", f"ops@{name}.example.com", "Ada Admin")
    with pytest.raises(AlreadyExists) as caught:
        await client.register_tenant(name, "Second", f"ops@{name}.example.com", "Ada Admin")
    error = caught.value
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "TENANT_SLUG_TAKEN"
    assert error.domain == "tenantry.v1"


async def test_invalid_fields_come_with_their_violations(client: AsyncTenantryClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.register_tenant("Not A Slug!", "", "not-an-email", "Ada Admin")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FIELD"
    assert {"slug", "display_name", "admin_email"} <= set(error.violations), error.violations
    assert all(v.description for v in error.field_violations)
    assert error.metadata["fields"]


async def test_a_failed_provisioning_raises_operation_failed_with_its_reason(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    name = slug()
    async with (
        failing_provisioning_stack(engine=engine, client=temporal_client, message="disk on fire") as failing,
        AsyncTenantryClient(target(failing), token=ADMIN_TOKEN, plaintext=True) as client,
    ):
        with pytest.raises(OperationFailed) as caught:
            await client.register_and_wait(name, "Doomed", f"ops@{name}.example.com", "Ada Admin", wait_timeout=60)
    assert caught.value.state == operation_pb2.OPERATION_STATE_FAILED
    assert caught.value.reason == "PROVISIONING_FAILED"
    assert caught.value.message == "the tenant could not be provisioned"
    assert "disk on fire" not in str(caught.value)  # the cause stays in the worker's log


async def test_a_token_callable_is_asked_again_only_when_its_token_is_about_to_expire(stack: Stack) -> None:
    asked: list[float] = []

    def short_then_long() -> BearerToken:
        # The first token expires inside the refresh margin: the next call must
        # ask again. The second lasts an hour: later calls reuse it.
        asked.append(time.time())
        lifetime = 30.0 if len(asked) == 1 else 3600.0
        return BearerToken(token(), expires_at=time.time() + lifetime)

    async with AsyncTenantryClient(
        target(stack), token=short_then_long, plaintext=True, token_refresh_margin=60
    ) as client:
        request = tenant_service_pb2.ListTenantsRequest(page_size=1)
        await client.list_tenants(request)
        assert len(asked) == 1
        await client.list_tenants(request)
        assert len(asked) == 2
        for _ in range(3):
            await client.list_tenants(request)
        assert len(asked) == 2

    # A bare JWT is refreshed by its own exp claim.
    jwts: list[str] = []

    def short_jwt() -> str:
        jwts.append(token(ttl=timedelta(seconds=30)))
        return jwts[-1]

    async with AsyncTenantryClient(target(stack), token=short_jwt, plaintext=True, token_refresh_margin=60) as client:
        for _ in range(3):
            await client.list_tenants(tenant_service_pb2.ListTenantsRequest(page_size=1))
    assert len(jwts) == 3


class FlakyKeys(JwksKeys):
    """The tests' real key set, refusing the first `refusals` lookups the way an
    unreachable JWKS does (UNAVAILABLE AUTH_KEYS_UNAVAILABLE)."""

    def __init__(self, refusals: int) -> None:
        assert TEST_AUTH.jwks_file is not None
        super().__init__(file=TEST_AUTH.jwks_file)
        self.refusals = refusals
        self.lookups = 0

    async def key_for(self, kid: str) -> PyJWK:
        self.lookups += 1
        if self.lookups <= self.refusals:
            raise keys_unavailable()
        return await super().key_for(kid)


async def api_with_keys(engine: AsyncEngine, temporal_client: Client, keys: JwksKeys) -> RunningApi:
    return await start_api(
        engine=engine,
        client=temporal_client,
        task_queue=f"test-client-{uuid.uuid4().hex[:8]}",
        address="127.0.0.1:0",
        verifier=TokenVerifier(TEST_AUTH, keys),
        page_tokens=page_tokens_for_tests(),
    )


async def test_unavailable_is_retried_by_grpc_itself(engine: AsyncEngine, temporal_client: Client) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    request = tenant_service_pb2.ListTenantsRequest(page_size=1)

    # Refused twice, then served: one call from the caller's side.
    keys = FlakyKeys(refusals=2)
    api = await api_with_keys(engine, temporal_client, keys)
    try:
        async with AsyncTenantryClient(
            f"127.0.0.1:{api.port}", token=ADMIN_TOKEN, plaintext=True, retry=retry
        ) as client:
            await client.list_tenants(request)
    finally:
        await api.stop(0)
    assert keys.lookups == 3

    # Refused more often than the policy allows: the last refusal, typed.
    keys = FlakyKeys(refusals=10)
    api = await api_with_keys(engine, temporal_client, keys)
    try:
        async with AsyncTenantryClient(
            f"127.0.0.1:{api.port}", token=ADMIN_TOKEN, plaintext=True, retry=retry
        ) as client:
            with pytest.raises(Unavailable) as caught:
                await client.list_tenants(request)
    finally:
        await api.stop(0)
    assert caught.value.reason == "AUTH_KEYS_UNAVAILABLE"
    assert keys.lookups == 3

    # Without retries the first refusal is the answer.
    keys = FlakyKeys(refusals=1)
    api = await api_with_keys(engine, temporal_client, keys)
    try:
        async with AsyncTenantryClient(
            f"127.0.0.1:{api.port}", token=ADMIN_TOKEN, plaintext=True, retry=RetryPolicy(max_attempts=1)
        ) as client:
            with pytest.raises(Unavailable):
                await client.list_tenants(request)
    finally:
        await api.stop(0)
    assert keys.lookups == 1


async def test_mtls_with_the_token_as_call_credentials(engine: AsyncEngine, temporal_client: Client) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("api.tenantry.test")
    client_cert = client_ca.issue_cert("client.tenantry.test")
    api = await start_api(
        engine=engine,
        client=temporal_client,
        task_queue=f"test-client-{uuid.uuid4().hex[:8]}",
        address="127.0.0.1:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens_for_tests(),
        credentials=grpc.ssl_server_credentials(
            [(server.private_key_pem.bytes(), server.cert_chain_pems[0].bytes())],
            root_certificates=client_ca.cert_pem.bytes(),
            require_client_auth=True,
        ),
    )
    roots = server_ca.cert_pem.bytes()
    request = tenant_service_pb2.ListTenantsRequest(page_size=1)
    try:
        mutual = Tls(
            root_certificates=roots,
            certificate_chain=client_cert.cert_chain_pems[0].bytes(),
            private_key=client_cert.private_key_pem.bytes(),
            server_name="api.tenantry.test",
        )
        async with AsyncTenantryClient(f"127.0.0.1:{api.port}", token=ADMIN_TOKEN, tls=mutual) as client:
            await client.list_tenants(request)
        # No client certificate: the handshake fails, and that is typed too.
        one_way = Tls(root_certificates=roots, server_name="api.tenantry.test")
        async with AsyncTenantryClient(
            f"127.0.0.1:{api.port}", token=ADMIN_TOKEN, tls=one_way, retry=RetryPolicy(max_attempts=1), timeout=5
        ) as client:
            with pytest.raises(Unavailable):
                await client.list_tenants(request)
    finally:
        await api.stop(0)


def test_the_client_needs_nothing_of_the_server() -> None:
    code = (
        "import sys, tenantry_client, tenantry_client.v1.tenant_service_pb2_grpc;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tenantry', 'tenant_api', 'provisioner_worker'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


async def last_sequence(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(LAST_SEQUENCE)).scalar_one())


async def sequences_between(engine: AsyncEngine, after: int, upto: int) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT sequence FROM tenant_events WHERE sequence > :a AND sequence <= :b ORDER BY sequence"),
            {"a": after, "b": upto},
        )
        return [int(row[0]) for row in rows]


async def test_watch_events_resumes_across_a_server_restart_without_gap_or_duplicate(
    engine: AsyncEngine, temporal_client: Client, stack: Stack
) -> None:
    port = free_port()

    async def watch_server() -> RunningApi:
        return await start_api(
            engine=engine,
            client=temporal_client,
            task_queue=stack.task_queue,
            address=f"127.0.0.1:{port}",
            verifier=verifier_for_tests(),
            page_tokens=page_tokens_for_tests(),
        )

    async def register() -> str:
        response = await stack.stubs.tenants.RegisterTenant(registration(), timeout=30)
        return response.tenant.id

    start = await last_sequence(engine)
    delivered: list[event_service_pb2.TenantEvent] = []
    api = await watch_server()
    async with AsyncTenantryClient(f"127.0.0.1:{port}", token=ADMIN_TOKEN, plaintext=True) as client:
        events = aiter(client.watch_events(after=start))

        async def until_registered(tenant_ids: set[str]) -> None:
            waiting = set(tenant_ids)
            while waiting:
                event = await asyncio.wait_for(anext(events), 30)
                delivered.append(event)
                if event.type == event_service_pb2.TENANT_EVENT_TYPE_REGISTERED:
                    waiting.discard(event.tenant_id)

        try:
            await until_registered({await register()})
            # The forced disconnect: the server goes away mid-watch, events
            # happen while it is gone, and it comes back on the same address.
            await api.stop(0)
            missed = {await register(), await register()}
            api = await watch_server()
            await until_registered(missed)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            await api.stop(0)

    sequences = [event.sequence for event in delivered]
    assert sequences == sorted(set(sequences)), "duplicates or disorder"
    assert sequences == await sequences_between(engine, start, sequences[-1]), "a gap"


async def test_the_sync_client(stack: Stack) -> None:
    name = slug()

    def blocking() -> tuple[tenant_pb2.Tenant, str, AlreadyExists]:
        with TenantryClient(target(stack), token=ADMIN_TOKEN, plaintext=True) as client:
            tenant = client.register_and_wait(name, "Sync Co", f"ops@{name}.example.com", "Ada Admin", wait_timeout=60)
            found = client.get_tenant(slug=name)
            with pytest.raises(AlreadyExists) as caught:
                client.register_tenant(name, "Again", f"ops@{name}.example.com", "Ada Admin")
            return tenant, found.id, caught.value

    # In a thread: the in-process server runs on this test's event loop.
    tenant, found_id, error = await asyncio.to_thread(blocking)
    assert tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert found_id == tenant.id
    assert error.reason == "TENANT_SLUG_TAKEN"


def non_loopback_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: routed by default, never reached
        except OSError:
            pytest.skip("no non-loopback IPv4 address here")
        address: str = probe.getsockname()[0]
    if ipaddress.ip_address(address).is_loopback:
        pytest.skip("no non-loopback IPv4 address here")
    return address


async def test_plaintext_off_loopback_carries_the_token_by_interceptor(
    engine: AsyncEngine, temporal_client: Client, stack: Stack
) -> None:
    """As behind a proxy or sidecar that ends TLS: gRPC carries no call
    credentials on such a channel, so the token goes as metadata."""
    host = non_loopback_address()
    api = await start_api(
        engine=engine,
        client=temporal_client,
        task_queue=stack.task_queue,
        address=f"{host}:0",
        verifier=verifier_for_tests(),
        page_tokens=page_tokens_for_tests(),
    )
    address = f"{host}:{api.port}"
    asked: list[str] = []

    def fresh() -> str:
        asked.append(token(ttl=timedelta(seconds=30)))  # inside the margin: asked for every call
        return asked[-1]

    try:
        start = await last_sequence(engine)
        async with AsyncTenantryClient(address, token=fresh, plaintext=True) as client:
            name = slug()
            registered = await client.register_tenant(name, "Proxy Co", f"ops@{name}.example.com", "Ada Admin")
            async for event in client.watch_events(after=start):  # a stream carries it too
                if event.tenant_id == registered.tenant.id:
                    break
        assert len(asked) == 2

        def blocking() -> str:
            with TenantryClient(address, token=ADMIN_TOKEN, plaintext=True) as sync_client:
                for event in sync_client.watch_events(tenant_id=registered.tenant.id, after=start):
                    return sync_client.get_tenant(event.tenant_id).slug
            raise AssertionError("the watch ended")

        assert await asyncio.to_thread(blocking) == name

        async with AsyncTenantryClient(address, plaintext=True) as anonymous:
            with pytest.raises(Unauthenticated) as caught:
                await anonymous.get_tenant(registered.tenant.id)
        assert caught.value.reason == "TOKEN_MISSING"
    finally:
        await api.stop(0)


def test_plaintext_only_when_asked() -> None:
    with pytest.raises(ValueError, match="exclude"):
        TenantryClient("127.0.0.1:1", token=ADMIN_TOKEN, plaintext=True, tls=Tls())
    # TLS is the default: never plaintext to a remote host by accident.
    TenantryClient("api.example.com:443", token=ADMIN_TOKEN).close()


class _Refused(grpc.RpcError):
    """The parts of a failed call error_from_rpc reads, as a server sends them."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes], ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


def test_every_detail_of_a_rich_status_is_read() -> None:
    """RetryInfo, which this server does not send yet, parsed like the rest."""
    details = [
        error_details_pb2.ErrorInfo(reason="TOO_MANY_REQUESTS", domain="tenantry.v1", metadata={"limit": "8"}),
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="slug", description="taken")]
        ),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)),
    ]
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=8, message="busy", details=packed)
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    error = error_from_rpc(_Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", trailing))
    assert isinstance(error, ResourceExhausted)
    assert (error.code, error.message, error.reason, error.domain) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "busy",
        "TOO_MANY_REQUESTS",
        "tenantry.v1",
    )
    assert error.metadata == {"limit": "8"}
    assert error.violations == {"slug": "taken"}
    assert error.retry_delay == 1.5
    # A status without details (e.g. from the transport) still maps to its class.
    bare = error_from_rpc(_Refused(grpc.StatusCode.UNAVAILABLE, "connection refused", ()))
    assert isinstance(bare, Unavailable)
    assert (bare.reason, bare.metadata, bare.field_violations) == ("", {}, ())
