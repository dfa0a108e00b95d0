"""Development signing key, its JWKS, and tokens minted from it.

`ensure_signing_key(directory)` creates (once) a private key and the JWKS that
holds its public half under `directory` (`.tenantry/` for tenantry-dev); the
API verifies tokens against that JWKS (TENANTRY_AUTH_JWKS_FILE). The console
script `tenantry-token` prints a token signed with that key:

    tenantry-token --scope "projects.read projects.write" --tenant <id> --ttl 1h

Tests use `mint_token` directly.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tenant_api.headers import AUTHORIZATION_HEADER

DEV_ISSUER = "tenantry-dev"
DEV_AUDIENCE = "tenantry"
ADMIN_SCOPE = "tenantry.admin"
DEFAULT_SUBJECT = "dev"
DEFAULT_TTL = timedelta(hours=1)
DEV_DIR_NAME = ".tenantry"
KEY_FILE_NAME = "signing-key.pem"
JWKS_FILE_NAME = "jwks.json"
PAGE_TOKEN_KEY_FILE_NAME = "page-token.key"

Algorithm = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    private_key: PrivateKey
    algorithm: Algorithm
    kid: str
    key_file: Path | None = None
    jwks_file: Path | None = None

    def public_jwk(self) -> dict[str, Any]:
        return {**_public_members(self.private_key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}


def _public_members(private_key: PrivateKey) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        members: dict[str, Any] = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        members = ECAlgorithm.to_jwk(public, as_dict=True)
    return {k: v for k, v in members.items() if k in ("kty", "crv", "x", "y")}


def thumbprint(members: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a kid that names the key."""
    canonical = json.dumps(dict(sorted(members.items())), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def new_signing_key(algorithm: Algorithm = "EdDSA") -> SigningKey:
    """A fresh in-memory key (tests that need a second, unknown key use this)."""
    private_key: PrivateKey
    if algorithm == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}: EdDSA or ES256")
    return SigningKey(private_key, algorithm, thumbprint(_public_members(private_key)))


def _algorithm_of(private_key: object) -> Algorithm:
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("the signing key is neither Ed25519 nor EC P-256")


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_signing_key(directory: Path, algorithm: Algorithm = "EdDSA") -> SigningKey:
    """The signing key under `directory`, created on first use, and its JWKS
    (rewritten only when it does not match the key). Idempotent, and safe when
    two processes race: the first key to land wins and both use it. An existing
    key is kept whatever `algorithm` says."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / KEY_FILE_NAME
    jwks_file = directory / JWKS_FILE_NAME
    if not key_file.exists():
        fresh = new_signing_key(algorithm)
        pem = fresh.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{KEY_FILE_NAME}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            with contextlib.suppress(FileExistsError):  # another process got there first
                os.link(tmp, key_file)
        finally:
            Path(tmp).unlink(missing_ok=True)
    private_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    algorithm_found = _algorithm_of(private_key)
    assert isinstance(private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    key = SigningKey(
        private_key, algorithm_found, thumbprint(_public_members(private_key)), key_file=key_file, jwks_file=jwks_file
    )
    wanted = json.dumps(key.jwks(), indent=2, sort_keys=True).encode() + b"\n"
    if not jwks_file.exists() or jwks_file.read_bytes() != wanted:
        _write_atomically(jwks_file, wanted, 0o644)
    return key


def ensure_page_token_key(directory: Path) -> str:
    """The API's page token key under `directory` (TENANTRY_PAGE_TOKEN_KEY:
    32 random bytes, hex), created on first use and kept, so page tokens
    survive restarts of the API. Safe when two processes race, like
    ensure_signing_key: the first key to land wins."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / PAGE_TOKEN_KEY_FILE_NAME
    if not key_file.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{PAGE_TOKEN_KEY_FILE_NAME}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process got there first
                os.link(tmp, key_file)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return key_file.read_text().strip()


def mint_token(
    key: SigningKey,
    *,
    scope: str = ADMIN_SCOPE,
    tenant_id: uuid.UUID | str | None = None,
    ttl: timedelta = DEFAULT_TTL,
    subject: str = DEFAULT_SUBJECT,
    issuer: str = DEV_ISSUER,
    audience: str | Sequence[str] = DEV_AUDIENCE,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A signed JWT as the API expects one."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience if isinstance(audience, str) else list(audience),
        "sub": subject,
        "scope": scope,
        "iat": issued,
        "exp": issued + int(ttl.total_seconds()),
        "jti": str(uuid.uuid4()),
    }
    if tenant_id is not None:
        claims["tenant_id"] = str(tenant_id)
    claims.update(extra_claims or {})
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})})


_TTL = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `7d` -> timedelta (positive)."""
    match = _TTL.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"invalid ttl {text!r}: a positive number with s, m, h or d (like 90s, 30m, 1h)")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tenantry-token", description="Print a bearer token signed with the development key."
    )
    parser.add_argument("--scope", default=ADMIN_SCOPE, help=f"space-separated permissions (default {ADMIN_SCOPE!r})")
    parser.add_argument("--tenant", default=None, help="bind the token to this tenant id (UUID)")
    parser.add_argument("--ttl", default="1h", help="lifetime, like 1h, 30m or 90s (default 1h)")
    parser.add_argument("--sub", default=DEFAULT_SUBJECT, help="subject, the recorded actor (default 'dev')")
    parser.add_argument("--dir", type=Path, default=Path(DEV_DIR_NAME), help="where the key lives (default .tenantry)")
    parser.add_argument("--issuer", default=None, help="iss claim (default $TENANTRY_AUTH_ISSUER or 'tenantry-dev')")
    parser.add_argument("--audience", default=None, help="aud claim (default $TENANTRY_AUTH_AUDIENCE or 'tenantry')")
    args = parser.parse_args(argv)
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        parser.error(str(exc))
    tenant: uuid.UUID | None = None
    if args.tenant is not None:
        try:
            tenant = uuid.UUID(args.tenant)
        except ValueError:
            parser.error(f"--tenant must be a tenant id (UUID), got {args.tenant!r}")
    if not args.scope.split():
        parser.error("--scope must name at least one permission")
    key = ensure_signing_key(args.dir)
    issuer = args.issuer or os.environ.get("TENANTRY_AUTH_ISSUER") or DEV_ISSUER
    audience = args.audience or os.environ.get("TENANTRY_AUTH_AUDIENCE") or DEV_AUDIENCE
    token = mint_token(
        key, scope=args.scope, tenant_id=tenant, ttl=ttl, subject=args.sub, issuer=issuer, audience=audience
    )
    sys.stdout.write(token + "\n")


if __name__ == "__main__":
    main()


# --- calling an API with a token (tests, the benchmark) ------------------------------


if TYPE_CHECKING:
    UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor


class _WithToken:
    """Adds `authorization: Bearer <token>` to calls that do not carry one."""

    def __init__(self, value: str) -> None:
        self._header = (AUTHORIZATION_HEADER, f"Bearer {value}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        if any(key == AUTHORIZATION_HEADER for key, _ in metadata):
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata, self._header),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call kind it implements only:
# one object per kind.
class _UnaryWithToken(_WithToken, UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamWithToken(_WithToken, UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


def channel_with_token(target: str, token: str, **kwargs: Any) -> grpc.aio.Channel:
    """A plaintext channel (loopback only) whose calls carry `token` unless they name their own."""
    interceptors = [_UnaryWithToken(token), _StreamWithToken(token)]
    return grpc.aio.insecure_channel(target, interceptors=interceptors, **kwargs)  # type: ignore[arg-type]
