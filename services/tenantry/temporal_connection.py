"""How both services connect to Temporal: the one place that turns the
settings into `Client.connect` arguments (address, namespace, TLS, mTLS, API
key), so the API and the worker always reach the cluster the same way."""

from __future__ import annotations

from typing import TypedDict

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from tenantry import tracing
from tenantry.settings import CommonSettings, MigrateTenantsSettings, TemporalTlsSettings


class ConnectOptions(TypedDict):
    target_host: str
    namespace: str
    tls: TLSConfig | bool
    api_key: str | None


def tls_config(settings: TemporalTlsSettings) -> TLSConfig | bool:
    """False: plaintext. Otherwise TLS, verified against the CA file (the
    system roots when unset: Temporal Cloud), with the client certificate when
    one is set (mTLS). An API key alone also means TLS: it is a bearer secret."""
    if not settings.enabled:
        return False
    return TLSConfig(
        server_root_ca_cert=settings.ca_file.read_bytes() if settings.ca_file is not None else None,
        client_cert=settings.cert_file.read_bytes() if settings.cert_file is not None else None,
        client_private_key=settings.key_file.read_bytes() if settings.key_file is not None else None,
    )


def connect_options(settings: CommonSettings | MigrateTenantsSettings) -> ConnectOptions:
    return ConnectOptions(
        target_host=settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls_config(settings.temporal_tls),
        api_key=settings.temporal_tls.api_key,
    )


async def connect(
    settings: CommonSettings | MigrateTenantsSettings, *, lazy: bool = False, runtime: Runtime | None = None
) -> Client:
    """`Client.connect` with the service's settings. `lazy`: connect at the first call.
    When the process traces, the client (and a worker built on it) carries the trace context."""
    return await Client.connect(
        **connect_options(settings), lazy=lazy, runtime=runtime, interceptors=tracing.temporal_interceptors()
    )
