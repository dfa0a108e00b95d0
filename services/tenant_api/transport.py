"""How the API listens: TLS, mTLS, or plaintext only where that is safe.

TLS when TENANTRY_TLS_CERT_FILE and TENANTRY_TLS_KEY_FILE are set; mTLS when
TENANTRY_TLS_CLIENT_CA_FILE is set too. Plaintext is allowed on a loopback
address (127.0.0.0/8, ::1, localhost), or anywhere when
TENANTRY_PLAINTEXT_BEHIND_PROXY=true says TLS ends in a proxy or mesh sidecar
in front (a warning at start says so). Anything else is a configuration error.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

import grpc

from tenantry.settings import (
    PLAINTEXT_BEHIND_PROXY,
    SettingsError,
    TlsSettings,
)
from tenantry.settings import (
    TLS_CERT_FILE as CERT_FILE,
)
from tenantry.settings import (
    TLS_CLIENT_CA_FILE as CLIENT_CA_FILE,
)
from tenantry.settings import (
    TLS_KEY_FILE as KEY_FILE,
)

log = logging.getLogger(__name__)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as [::1] or ::ffff:127.x) and localhost; a wildcard
    (0.0.0.0, [::]), a LAN address or any other name is not."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def listen_credentials(address: str, tls: TlsSettings) -> grpc.ServerCredentials | None:
    """The server credentials for `address` (None: plaintext), or SettingsError
    when plaintext would be reachable from other machines unprotected."""
    if tls.enabled:
        return load_server_credentials(tls)
    if is_loopback_host(address.rpartition(":")[0]):
        return None
    if tls.plaintext_behind_proxy:
        log.warning(
            "serving plaintext gRPC on %s: TLS is expected to end in a proxy or mesh sidecar in front "
            "(%s=true); nothing here encrypts the traffic",
            address,
            PLAINTEXT_BEHIND_PROXY,
        )
        return None
    raise SettingsError(
        f"TENANTRY_GRPC_ADDRESS {address} is not a loopback address and TLS is off: set {CERT_FILE} and "
        f"{KEY_FILE}, or {PLAINTEXT_BEHIND_PROXY}=true if TLS ends in a proxy or mesh sidecar in front"
    )


def load_server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Reads and checks the PEM files, so a bad one is named at start and not
    discovered at the first handshake."""
    assert tls.cert_file is not None and tls.key_file is not None
    cert = _read(CERT_FILE, tls.cert_file)
    key = _read(KEY_FILE, tls.key_file)
    _check_certificates(CERT_FILE, tls.cert_file, cert)
    _check_key(tls.cert_file, tls.key_file)
    client_ca: bytes | None = None
    if tls.client_ca_file is not None:
        client_ca = _read(CLIENT_CA_FILE, tls.client_ca_file)
        _check_certificates(CLIENT_CA_FILE, tls.client_ca_file, client_ca)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name} cannot be read: {path}: {exc.strerror or exc}") from None


def _check_certificates(name: str, path: Path, data: bytes) -> None:
    try:
        text = data.decode("ascii")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (UnicodeDecodeError, ValueError, ssl.SSLError):
        raise SettingsError(f"{name} {path} does not hold a PEM certificate") from None


def _check_key(cert_file: Path, key_file: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key fails here
        # instead of OpenSSL prompting on a terminal the container lacks.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if "MISMATCH" in str(exc):
            raise SettingsError(f"{KEY_FILE} {key_file} does not match the certificate in {CERT_FILE}") from None
        raise SettingsError(f"{KEY_FILE} {key_file} does not hold an unencrypted PEM private key") from None
