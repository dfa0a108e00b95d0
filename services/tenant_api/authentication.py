"""Who is calling: bearer JWTs verified against a JSON Web Key Set.

A token is signed with RS256, ES256 or EdDSA by a key in the configured JWKS
(a file, or an HTTPS URL), names the configured issuer and audience, has an
`exp` (60 s leeway) and a `sub`. `alg: none` and HMAC are refused outright: an
HMAC "signed" with a public key anyone can read is the classic key-confusion
forgery. Keys are found by `kid`; a token naming a `kid` the server does not
know makes it reread or refetch the key set (at most once per
`min_refresh_seconds`), so a key rotation needs no restart. Verified tokens are
cached until they expire, in a cache of bounded size, so a caller repeating its
token does not pay a signature check per call.

The verification itself is PyJWT's; this module decides what to ask of it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from jwt import PyJWK

from tenant_api.errors import ApiError
from tenant_api.validation import parse_uuid
from tenantry.settings import AuthSettings

log = logging.getLogger(__name__)

# The only signature algorithms a token (and a key in the set) may use.
ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
LEEWAY_SECONDS = 60

# A bearer token longer than this is not one of ours; it is refused unread.
MAX_TOKEN_LENGTH = 8192
# A key set larger than this (bytes, or keys) is refused rather than parsed.
MAX_JWKS_BYTES = 1 << 20
MAX_JWKS_KEYS = 100
JWKS_FETCH_TIMEOUT_SECONDS = 5.0


# -- the principal ---------------------------------------------------------------


ADMIN_PERMISSION = "tenantry.admin"


@dataclass(frozen=True)
class Principal:
    """The verified caller. `subject` is the actor recorded on operations and
    events; `tenant_id`, when set, limits tenant-scoped calls to that tenant."""

    subject: str
    permissions: frozenset[str]
    tenant_id: uuid.UUID | None
    # Seconds since the epoch, from the token's `exp`.
    expires_at: float

    def grants(self, permission: str) -> bool:
        return permission in self.permissions or ADMIN_PERMISSION in self.permissions


# Set for the duration of an authenticated call (see AuthenticationInterceptor).
current_principal: ContextVar[Principal] = ContextVar("current_principal")


def current_actor() -> str:
    """The calling principal's subject, recorded on what the call changes. Every
    call to our services is authenticated, so outside one this is a bug."""
    return current_principal.get().subject


def token_missing() -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING", "a bearer token is required")


def token_invalid(why: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID", f"invalid bearer token: {why}")


def token_expired() -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "the bearer token has expired")


def keys_unavailable() -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAVAILABLE, "AUTH_KEYS_UNAVAILABLE", "the token signing keys cannot be loaded, retry later"
    )


def bearer_token(authorization: str | None) -> str:
    """The token from an `authorization` metadata value (`Bearer <token>`)."""
    if authorization is None or not authorization.strip():
        raise token_missing()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise token_invalid("the authorization header must be 'Bearer <token>'")
    return token


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Claims PyJWT has already checked (signature, iss, aud, exp) to a Principal."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise token_invalid("'sub' must be a non-empty string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise token_invalid("'scope' must be a space-separated string")
    raw_tenant = claims.get("tenant_id")
    tenant_id: uuid.UUID | None = None
    if raw_tenant is not None:
        tenant_id = parse_uuid(raw_tenant) if isinstance(raw_tenant, str) else None
        if tenant_id is None:
            raise token_invalid("'tenant_id' must be a UUID")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise token_invalid("'exp' must be a number")
    return Principal(subject=subject, permissions=frozenset(scope.split()), tenant_id=tenant_id, expires_at=float(exp))


# -- keys ------------------------------------------------------------------------


def parse_jwks(data: bytes) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by kid. Keys without a kid,
    symmetric keys, encryption keys and keys for other algorithms are skipped:
    a set can carry them, but they never verify one of our tokens."""
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"JWKS is larger than {MAX_JWKS_BYTES} bytes")
    document = json.loads(data)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("JWKS has no 'keys' list")
    if len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"JWKS has more than {MAX_JWKS_KEYS} keys")
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("skipping JWKS key %r: %s", kid, exc)
            continue
        if key.algorithm_name not in ALLOWED_ALGORITHMS:
            log.warning("skipping JWKS key %r: algorithm %s is not allowed", kid, key.algorithm_name)
            continue
        keys[kid] = key
    return keys


def _read_file(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_JWKS_BYTES + 1)
    return data


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith("https://"):
            raise OSError(f"JWKS URL redirected to a non-HTTPS location: {newurl.split(':', 1)[0]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_url(url: str, context: ssl.SSLContext) -> bytes:
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(request, timeout=JWKS_FETCH_TIMEOUT_SECONDS) as response:
        data: bytes = response.read(MAX_JWKS_BYTES + 1)
    return data


class JwksKeys:
    """The key set, reread (file) or refetched (URL) when a token names an
    unknown kid, at most once per `min_refresh_seconds`; concurrent callers
    share one reload. A failed reload keeps the keys already known."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        min_refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (file is None) == (url is None):
            raise ValueError("exactly one of file and url")
        self._file = file
        self._url = url
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self.loads = 0  # how many reads or fetches were attempted (tests read it)

    @classmethod
    def from_settings(cls, settings: AuthSettings, **kwargs: Any) -> JwksKeys:
        return cls(file=settings.jwks_file, url=settings.jwks_url, **kwargs)

    async def _load(self) -> None:
        self.loads += 1
        self._loaded_at = self._clock()
        source = str(self._file) if self._file is not None else self._url
        try:
            if self._file is not None:
                data = await asyncio.to_thread(_read_file, self._file)
            else:
                assert self._url is not None
                data = await asyncio.to_thread(_fetch_url, self._url, self._ssl_context)
            keys = parse_jwks(data)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("could not load the JWKS from %s: %s", source, exc)
            return
        if not keys:
            log.warning("the JWKS from %s has no usable signing key", source)
        self._keys = keys

    async def refresh(self) -> None:
        """Load now unless a load happened within `min_refresh_seconds`."""
        async with self._lock:
            if self._loaded_at is None or self._clock() - self._loaded_at >= self._min_refresh:
                await self._load()

    async def key_for(self, kid: str) -> PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        await self.refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            raise keys_unavailable()
        raise token_invalid(f"unknown signing key {kid[:64]!r}")


# -- verification -------------------------------------------------------------------


class TokenVerifier:
    """Bearer token to Principal. Successful verifications are remembered until
    the token expires, in an LRU of at most `cache_size` tokens."""

    def __init__(
        self,
        settings: AuthSettings,
        keys: JwksKeys,
        *,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._keys = keys
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> Principal:
        principal = self._cache.get(token)
        if principal is not None:
            if self._clock() < principal.expires_at + LEEWAY_SECONDS:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
            raise token_expired()
        principal = await self._verify(token)
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise token_invalid("too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise token_invalid("not a JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise token_invalid(f"algorithm {str(alg)[:16]!r} is not accepted (RS256, ES256 or EdDSA)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise token_invalid("no 'kid' in the header")
        key = await self._keys.key_for(kid)
        if key.algorithm_name != alg:
            raise token_invalid(f"key {kid[:64]!r} does not sign {alg}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise token_expired() from None
        except jwt.PyJWTError as exc:
            # PyJWT names the failed check (signature, audience, issuer, a missing claim), never a value.
            raise token_invalid(str(exc)[:120]) from None
        return principal_from_claims(claims)
