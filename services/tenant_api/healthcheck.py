"""Container HEALTHCHECK: exit 0 when the local API reports SERVING.

Reads the API's own environment. Plaintext unless TENANTRY_TLS_CERT_FILE is
set; then it speaks TLS to 127.0.0.1 and verifies the server certificate:
- TENANTRY_HEALTHCHECK_CA_FILE: the CA (PEM) that signed the server
  certificate; unset means gRPC's bundled public roots.
- TENANTRY_HEALTHCHECK_SERVER_NAME (default `localhost`): the name the
  certificate must carry. gRPC's `grpc.ssl_target_name_override` checks the
  certificate against this name while the connection goes to 127.0.0.1, the
  usual way to reach a TLS server by address; verification is never skipped.
- With mTLS (TENANTRY_TLS_CLIENT_CA_FILE set) the check needs a client
  certificate signed by that CA: TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE and
  TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_SERVER_NAME = "localhost"


class HealthcheckConfigError(Exception):
    """The environment does not say how to reach the API; the message says why."""


def _read(env: Mapping[str, str], name: str) -> bytes | None:
    path = env.get(name, "").strip()
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise HealthcheckConfigError(f"{name} cannot be read: {path}: {exc.strerror or exc}") from None


def open_channel(target: str, env: Mapping[str, str]) -> grpc.Channel:
    """A channel to the API at `target` that speaks what the API serves."""
    if not env.get("TENANTRY_TLS_CERT_FILE", "").strip():
        return grpc.insecure_channel(target)
    client_cert = _read(env, "TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE")
    client_key = _read(env, "TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE")
    if (client_cert is None) != (client_key is None):
        raise HealthcheckConfigError(
            "TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE and TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE go together"
        )
    if env.get("TENANTRY_TLS_CLIENT_CA_FILE", "").strip() and client_cert is None:
        raise HealthcheckConfigError(
            "mTLS is on (TENANTRY_TLS_CLIENT_CA_FILE): set TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE and "
            "TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE to a client certificate signed by that CA"
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(env, "TENANTRY_HEALTHCHECK_CA_FILE"),
        private_key=client_key,
        certificate_chain=client_cert,
    )
    server_name = env.get("TENANTRY_HEALTHCHECK_SERVER_NAME", "").strip() or DEFAULT_SERVER_NAME
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def is_serving(target: str, env: Mapping[str, str], timeout: float = 3) -> bool:
    with open_channel(target, env) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    port = env.get("TENANTRY_GRPC_ADDRESS", "127.0.0.1:50051").rpartition(":")[2]
    try:
        return 0 if is_serving(f"127.0.0.1:{port}", env) else 1
    except HealthcheckConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
