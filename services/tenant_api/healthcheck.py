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
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tenantry.settings import HealthcheckSettings, SettingsError, load_or_exit


class HealthcheckConfigError(Exception):
    """The environment does not say how to reach the API; the message says why."""


def _read(name: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HealthcheckConfigError(f"{name} cannot be read: {path}: {exc.strerror or exc}") from None


def open_channel(target: str, env: Mapping[str, str]) -> grpc.Channel:
    """A channel to the API at `target` that speaks what the API serves."""
    try:
        settings = HealthcheckSettings.from_env(env)
    except SettingsError as exc:
        raise HealthcheckConfigError(str(exc)) from None
    if not settings.tls.enabled:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("TENANTRY_HEALTHCHECK_CA_FILE", settings.ca_file),
        private_key=_read("TENANTRY_HEALTHCHECK_CLIENT_KEY_FILE", settings.client_key_file),
        certificate_chain=_read("TENANTRY_HEALTHCHECK_CLIENT_CERT_FILE", settings.client_cert_file),
    )
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", settings.server_name)])


def is_serving(target: str, env: Mapping[str, str], timeout: float = 3) -> bool:
    with open_channel(target, env) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def main(env: Mapping[str, str] | None = None) -> int:
    """0: SERVING. 1: not serving or unreachable. 2 (SystemExit): misconfigured."""
    env = os.environ if env is None else env
    port = load_or_exit(HealthcheckSettings.from_env, env).grpc_address.rpartition(":")[2]
    try:
        return 0 if is_serving(f"127.0.0.1:{port}", env) else 1
    except HealthcheckConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
