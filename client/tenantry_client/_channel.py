"""What both clients share: how a channel is secured, how the bearer token is
found and refreshed, and gRPC's own retry policy."""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

# Every service of the tenantry.v1 contract.
SERVICES = (
    "tenantry.v1.TenantService",
    "tenantry.v1.OperationService",
    "tenantry.v1.ProjectService",
    "tenantry.v1.TenantEventService",
)
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class BearerToken:
    """A token and when it expires (Unix seconds; None: unknown)."""

    value: str
    expires_at: float | None = None


# A static token, or a callable returning a fresh one (a string, or a BearerToken
# saying when it expires).
TokenSource = str | Callable[[], "str | BearerToken"]


@dataclass(frozen=True)
class Tls:
    """TLS options. `root_certificates`: PEM of the CAs to trust (None: the
    system's); `certificate_chain` and `private_key` (PEM, both or neither):
    the client certificate for mTLS; `server_name`: the name to verify the
    server's certificate against, when it differs from the target's host."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key go together (mTLS)")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retryPolicy (see gRFC A6), applied by the channel itself to calls
    that fail UNAVAILABLE (the server is restarting, the database or the
    signing keys are briefly unreachable, a tenant is being moved). gRPC caps
    `max_attempts` at 5; 1 (or no codes) turns retries off. Retried writes are safe: the client gives every
    mutating call a request_id, so a repeat returns the first result."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,)

    def service_config(self) -> str:
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_codes],
        }
        method: dict[str, Any] = {"name": [{"service": name} for name in SERVICES]}
        if self.max_attempts > 1 and self.retryable_codes:  # else no retries (gRPC refuses an empty list)
            method["retryPolicy"] = policy
        return json.dumps({"methodConfig": [method]})


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (the server
    verifies); None when `token` is not a JWT or has no numeric exp."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


class Tokens:
    """The current bearer token. A callable source is asked again
    `refresh_margin` seconds before the token it gave expires (its BearerToken
    expiry, else the JWT's exp); a token of unknown expiry is asked for on
    every call attempt. Thread-safe: gRPC asks from its own threads."""

    def __init__(
        self, source: TokenSource, refresh_margin: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._source = source
        self._margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: BearerToken | None = None

    def current(self) -> str:
        source = self._source
        if isinstance(source, str):
            return source
        with self._lock:
            cached = self._cached
            expires_at = None if cached is None else cached.expires_at
            if cached is not None and expires_at is not None and self._clock() < expires_at - self._margin:
                return cached.value
            fresh = source()
            token = fresh if isinstance(fresh, BearerToken) else BearerToken(fresh, jwt_expiry(fresh))
            if not token.value:
                raise ValueError("the token source returned an empty token")
            self._cached = token
            return token.value


class _TokenPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            value = self._tokens.current()
        except Exception as exc:  # noqa: BLE001  # handed to gRPC, which fails the call with it
            callback((), exc)
            return
        callback((("authorization", f"Bearer {value}"),), None)


def is_loopback(target: str) -> bool:
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = host.rpartition(":")[0] if host.count(":") == 1 or host.startswith("[") else host
    host = host.strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Security:
    """How a client's channel is made: `credentials` (None: an insecure
    channel), extra channel options, and, for a plaintext channel to a
    non-loopback target, the `tokens` its interceptors add to every call."""

    credentials: grpc.ChannelCredentials | None
    options: list[tuple[str, Any]]
    interceptor_tokens: Tokens | None = None


def channel_security(
    target: str, token: TokenSource | None, tls: Tls | None, plaintext: bool, refresh_margin: float
) -> Security:
    """TLS (the default) or, when asked, plaintext. The token goes as gRPC call
    credentials, which gRPC carries on TLS and on local (loopback) credentials;
    plaintext to any other target (TLS ended by a proxy or sidecar in front)
    gets it from an interceptor instead."""
    tokens = None if token is None else Tokens(token, refresh_margin)
    if plaintext:
        if tls is not None:
            raise ValueError("plaintext and tls exclude each other")
        if not is_loopback(target):
            return Security(None, [], tokens)
        channel: grpc.ChannelCredentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        options: list[tuple[str, Any]] = []
    else:
        tls = tls or Tls()
        channel = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
        options = [] if tls.server_name is None else [("grpc.ssl_target_name_override", tls.server_name)]
    if tokens is None:
        return Security(channel, options)
    call = grpc.metadata_call_credentials(_TokenPlugin(tokens), name="tenantry-bearer")
    return Security(grpc.composite_channel_credentials(channel, call), options)


def channel_options(retry: RetryPolicy, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config()), *extra]
