"""Bearer-token verification: real keys, real signatures, real JWKS files and a
real HTTPS server (certificate from a throwaway trustme CA) for the JWKS URL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tenant_api import authentication
from tenant_api.authentication import (
    LEEWAY_SECONDS,
    JwksKeys,
    Principal,
    TokenVerifier,
    bearer_token,
    parse_jwks,
)
from tenant_api.errors import ApiError
from tenantry.settings import AuthSettings, SettingsError
from tenantry_dev.tokens import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    SigningKey,
    ensure_signing_key,
    mint_token,
    new_signing_key,
    parse_ttl,
    thumbprint,
)
from tenantry_dev.tokens import main as tenantry_token

TENANT = uuid.UUID("0b5c7a52-58a4-4a52-9c1b-2f1e6a3b9d01")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_jwks(path: Path, *keys: SigningKey | dict[str, Any]) -> None:
    entries = [key.public_jwk() if isinstance(key, SigningKey) else key for key in keys]
    path.write_text(json.dumps({"keys": entries}))


def settings_for(jwks_file: Path) -> AuthSettings:
    return AuthSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks_file=jwks_file, jwks_url=None)


def verifier_for(jwks_file: Path, **kwargs: Any) -> tuple[TokenVerifier, JwksKeys]:
    keys = JwksKeys(file=jwks_file, min_refresh_seconds=kwargs.pop("min_refresh_seconds", 10.0), **kwargs)
    return TokenVerifier(settings_for(jwks_file), keys), keys


async def refused(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    assert caught.value.code == code, caught.value
    assert caught.value.reason == reason, caught.value
    return caught.value


@pytest.fixture
def dev_key(tmp_path: Path) -> SigningKey:
    return ensure_signing_key(tmp_path / ".tenantry")


@pytest.fixture
def verifier(dev_key: SigningKey) -> TokenVerifier:
    assert dev_key.jwks_file is not None
    return verifier_for(dev_key.jwks_file)[0]


# -- settings ---------------------------------------------------------------------


def test_settings_from_env(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    settings = AuthSettings.from_env(
        {"TENANTRY_AUTH_ISSUER": "https://idp.example", "TENANTRY_AUTH_JWKS_FILE": str(jwks)}
    )
    assert settings == AuthSettings("https://idp.example", "tenantry", jwks, None)
    by_url = AuthSettings.from_env(
        {
            "TENANTRY_AUTH_ISSUER": "x",
            "TENANTRY_AUTH_AUDIENCE": "api",
            "TENANTRY_AUTH_JWKS_URL": "https://idp.example/jwks",
        }
    )
    assert by_url == AuthSettings("x", "api", None, "https://idp.example/jwks")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TENANTRY_AUTH_JWKS_URL": "https://a/jwks"}, "TENANTRY_AUTH_ISSUER"),
        ({"TENANTRY_AUTH_ISSUER": " ", "TENANTRY_AUTH_JWKS_URL": "https://a"}, "TENANTRY_AUTH_ISSUER"),
        ({"TENANTRY_AUTH_ISSUER": "x"}, "TENANTRY_AUTH_JWKS_FILE"),
        ({"TENANTRY_AUTH_ISSUER": "x", "TENANTRY_AUTH_JWKS_URL": "http://a/jwks"}, "TENANTRY_AUTH_JWKS_URL"),
        ({"TENANTRY_AUTH_ISSUER": "x", "TENANTRY_AUTH_JWKS_FILE": "/nonexistent/jwks.json"}, "TENANTRY_AUTH_JWKS_FILE"),
        (
            {
                "TENANTRY_AUTH_ISSUER": "x",
                "TENANTRY_AUTH_JWKS_FILE": "/etc/hostname",
                "TENANTRY_AUTH_JWKS_URL": "https://a",
            },
            "TENANTRY_AUTH_JWKS_URL",
        ),
        (
            {"TENANTRY_AUTH_ISSUER": "x", "TENANTRY_AUTH_AUDIENCE": "a b", "TENANTRY_AUTH_JWKS_URL": "https://a"},
            "TENANTRY_AUTH_AUDIENCE",
        ),
    ],
)
def test_settings_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        AuthSettings.from_env(env)
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


# -- tokens that verify -------------------------------------------------------------


async def test_dev_token_verifies_to_a_principal(dev_key: SigningKey, verifier: TokenVerifier) -> None:
    token = mint_token(dev_key, scope="projects.read projects.write", tenant_id=TENANT, subject="alice")
    principal = await verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.permissions == frozenset({"projects.read", "projects.write"})
    assert principal.tenant_id == TENANT
    assert principal.grants("projects.read")
    assert not principal.grants("tenants.create")


def test_admin_grants_everything() -> None:
    admin = Principal("ops", frozenset({"tenantry.admin"}), None, time.time() + 60)
    assert admin.grants("tenants.purge")
    assert admin.grants("projects.write")
    nobody = Principal("ops", frozenset(), None, time.time() + 60)
    assert not nobody.grants("tenants.get")


def rsa_key() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk = {"kty": jwk["kty"], "n": jwk["n"], "e": jwk["e"]}
    jwk["kid"] = thumbprint(jwk)
    return private, jwk


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "svc", "scope": "tenants.get", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
async def test_each_allowed_algorithm_verifies(tmp_path: Path, algorithm: str) -> None:
    jwks = tmp_path / "jwks.json"
    if algorithm == "RS256":
        private, jwk = rsa_key()
        write_jwks(jwks, jwk)
        token = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": jwk["kid"]})
    else:
        key = new_signing_key(algorithm)  # type: ignore[arg-type]
        write_jwks(jwks, key)
        token = mint_token(key, scope="tenants.get")
    verifier, _ = verifier_for(jwks)
    assert (await verifier.verify(token)).permissions == {"tenants.get"}


async def test_audience_list_containing_ours_is_accepted(dev_key: SigningKey, verifier: TokenVerifier) -> None:
    token = mint_token(dev_key, audience=["other-api", DEV_AUDIENCE])
    assert (await verifier.verify(token)).subject == "dev"


async def test_expiry_has_sixty_seconds_of_leeway(dev_key: SigningKey, verifier: TokenVerifier) -> None:
    just_expired = mint_token(dev_key, ttl=timedelta(minutes=5), now=time.time() - 300 - LEEWAY_SECONDS + 20)
    assert (await verifier.verify(just_expired)).subject == "dev"
    long_expired = mint_token(dev_key, ttl=timedelta(minutes=5), now=time.time() - 300 - LEEWAY_SECONDS - 20)
    await refused(verifier.verify(long_expired), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


# -- tokens that do not -----------------------------------------------------------------


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


async def test_alg_none_is_refused(dev_key: SigningKey, verifier: TokenVerifier) -> None:
    token = unsigned(claims(), {"alg": "none", "typ": "JWT", "kid": dev_key.kid})
    error = await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "algorithm" in error.message


async def test_hmac_key_confusion_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    """The classic attack: the server's RSA public key is public, so an HS256
    token "signed" with its PEM as the HMAC secret must not verify."""
    private, jwk = rsa_key()
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk)
    verifier, _ = verifier_for(jwks)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}).encode())
    payload = base64.urlsafe_b64encode(json.dumps(claims(scope="tenantry.admin")).encode())
    signing_input = header.rstrip(b"=") + b"." + payload.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    forged = (signing_input + b"." + signature).decode()
    await refused(verifier.verify(forged), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    # The same forgery with the header claiming RS256 fails the RSA signature check.
    header_rs = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": jwk["kid"]}).encode()).rstrip(b"=")
    forged_rs = (header_rs + b"." + payload.rstrip(b"=") + b"." + signature).decode()
    await refused(verifier.verify(forged_rs), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    # A legitimately signed token with the same key still works.
    good = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": jwk["kid"]})
    assert (await verifier.verify(good)).subject == "svc"


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "someone-else"},
        {"aud": "another-api"},
        {"aud": None},
        {"iss": None},
        {"sub": None},
        {"sub": ""},
        {"exp": None},
        {"scope": ["tenants.get"]},
        {"tenant_id": "not-a-uuid"},
        {"nbf": int(time.time()) + 3600},
    ],
    ids=repr,
)
async def test_claims_that_do_not_verify(dev_key: SigningKey, verifier: TokenVerifier, overrides: Any) -> None:
    token = jwt.encode(claims(**overrides), dev_key.private_key, algorithm="EdDSA", headers={"kid": dev_key.kid})
    await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_signature_by_another_key_under_a_known_kid_is_refused(
    dev_key: SigningKey, verifier: TokenVerifier
) -> None:
    impostor = new_signing_key("EdDSA")
    token = jwt.encode(claims(), impostor.private_key, algorithm="EdDSA", headers={"kid": dev_key.kid})
    await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    good = mint_token(dev_key)
    head, _, sig = good.split(".")
    tampered_body = base64.urlsafe_b64encode(json.dumps(claims(scope="tenantry.admin")).encode()).rstrip(b"=").decode()
    await refused(verifier.verify(f"{head}.{tampered_body}.{sig}"), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_algorithm_must_match_the_key(tmp_path: Path) -> None:
    """An ES256 token naming an EdDSA key's kid is refused before any verify."""
    ed = new_signing_key("EdDSA")
    es = new_signing_key("ES256")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, ed)
    verifier, _ = verifier_for(jwks)
    token = jwt.encode(claims(), es.private_key, algorithm="ES256", headers={"kid": ed.kid})
    await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 9000, "eyJhbGciOiJFZERTQSJ9.e30.sig"])
async def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc") == "abc"
    for missing in (None, "", "  "):
        with pytest.raises(ApiError) as caught:
            bearer_token(missing)
        assert caught.value.reason == "TOKEN_MISSING"
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    for malformed in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "abc.def.ghi"):
        with pytest.raises(ApiError) as caught:
            bearer_token(malformed)
        assert caught.value.reason == "TOKEN_INVALID", malformed


# -- the cache -----------------------------------------------------------------------------


async def test_verified_tokens_are_cached_until_exp(dev_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dev_key.jwks_file is not None
    clock = Clock(time.time())
    verifier = TokenVerifier(settings_for(dev_key.jwks_file), JwksKeys(file=dev_key.jwks_file), clock=clock)
    decodes = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)  # the module authentication calls
    token = mint_token(dev_key, ttl=timedelta(seconds=120), now=clock.now)
    first = await verifier.verify(token)
    for _ in range(50):
        assert await verifier.verify(token) is first
    assert decodes == 1
    clock.now += 120 + LEEWAY_SECONDS + 1
    await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert verifier.cached == 0


async def test_cache_is_bounded(dev_key: SigningKey) -> None:
    assert dev_key.jwks_file is not None
    verifier = TokenVerifier(settings_for(dev_key.jwks_file), JwksKeys(file=dev_key.jwks_file), cache_size=3)
    tokens = [mint_token(dev_key, subject=f"user-{i}") for i in range(10)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier.cached == 3
    # Evicted tokens still verify (they just pay the signature check again).
    assert (await verifier.verify(tokens[0])).subject == "user-0"
    assert verifier.cached == 3


async def test_refused_tokens_are_not_cached(dev_key: SigningKey, verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(iss="someone-else"), dev_key.private_key, algorithm="EdDSA", headers={"kid": dev_key.kid})
    for _ in range(3):
        await refused(verifier.verify(token), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert verifier.cached == 0


# -- keys: files, rotation, URLs ----------------------------------------------------------------


def test_parse_jwks_keeps_only_usable_signing_keys() -> None:
    ed = new_signing_key("EdDSA")
    _, rsa_jwk = rsa_key()
    document = {
        "keys": [
            ed.public_jwk(),
            rsa_jwk,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**new_signing_key("ES256").public_jwk(), "kid": "enc", "use": "enc"},
            {k: v for k, v in new_signing_key("ES256").public_jwk().items() if k != "kid"},
            {**rsa_jwk, "kid": "rsa-as-hmac", "alg": "HS256"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
        ]
    }
    keys = parse_jwks(json.dumps(document).encode())
    assert set(keys) == {ed.kid, rsa_jwk["kid"]}
    with pytest.raises(ValueError):
        parse_jwks(b'{"nokeys": []}')
    with pytest.raises(ValueError):
        parse_jwks(b" " * (authentication.MAX_JWKS_BYTES + 1))


async def test_rotation_is_picked_up_from_the_file_without_restart(tmp_path: Path) -> None:
    old, new = new_signing_key("EdDSA"), new_signing_key("ES256")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, old)
    clock = Clock(1000.0)
    verifier, keys = verifier_for(jwks, min_refresh_seconds=30.0, clock=clock)
    assert (await verifier.verify(mint_token(old))).subject == "dev"
    assert keys.loads == 1
    # An unknown kid rereads the file at most once per interval, however many tokens name it.
    unknown = [mint_token(new, subject=f"s{i}") for i in range(20)]
    await asyncio.gather(
        *(refused(verifier.verify(t), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID") for t in unknown)
    )
    assert keys.loads == 1  # the first load was just now: rate-limited
    clock.now += 31
    write_jwks(jwks, old, new)
    results = await asyncio.gather(*(verifier.verify(t) for t in unknown))
    assert [p.subject for p in results] == [f"s{i}" for i in range(20)]
    assert keys.loads == 2  # twenty callers, one reread
    # The old key keeps working alongside the new one.
    assert (await verifier.verify(mint_token(old, subject="late"))).subject == "late"


async def test_unreadable_keys_are_unavailable_not_invalid(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    key = new_signing_key("EdDSA")
    verifier, _ = verifier_for(jwks)  # the file does not exist
    await refused(verifier.verify(mint_token(key)), grpc.StatusCode.UNAVAILABLE, "AUTH_KEYS_UNAVAILABLE")


async def test_a_failed_reload_keeps_the_known_keys(tmp_path: Path) -> None:
    key = new_signing_key("EdDSA")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, key)
    verifier, keys = verifier_for(jwks, min_refresh_seconds=0.0)
    assert (await verifier.verify(mint_token(key, subject="a"))).subject == "a"
    jwks.write_text("{ not json")
    await refused(
        verifier.verify(mint_token(new_signing_key("EdDSA"))), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"
    )
    assert keys.loads == 2
    assert (await verifier.verify(mint_token(key, subject="b"))).subject == "b"


class JwksServer:
    """A real HTTPS server on 127.0.0.1 (port 0) serving `document`."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{server.port}/jwks")
                    self.end_headers()
                    return
                body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/jwks") -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def jwks_server(ca: trustme.CA) -> Iterator[JwksServer]:
    server = JwksServer(ca.issue_cert("127.0.0.1"))
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_jwks_url_fetch_and_rotation(jwks_server: JwksServer, ca: trustme.CA) -> None:
    old, new = new_signing_key("ES256"), new_signing_key("EdDSA")
    jwks_server.document = {"keys": [old.public_jwk()]}
    settings = AuthSettings(DEV_ISSUER, DEV_AUDIENCE, None, jwks_server.url())
    clock = Clock(0.0)
    keys = JwksKeys.from_settings(settings, ssl_context=client_context(ca), min_refresh_seconds=5.0, clock=clock)
    verifier = TokenVerifier(settings, keys)
    assert (await verifier.verify(mint_token(old, subject="a"))).subject == "a"
    assert jwks_server.requests == 1
    # Cached by kid: more tokens from the same key fetch nothing.
    for i in range(5):
        await verifier.verify(mint_token(old, subject=f"a{i}"))
    assert jwks_server.requests == 1
    # Rotation: the new kid triggers one refetch once the interval has passed.
    jwks_server.document = {"keys": [old.public_jwk(), new.public_jwk()]}
    await refused(verifier.verify(mint_token(new)), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert jwks_server.requests == 1
    clock.now += 6
    assert (await verifier.verify(mint_token(new, subject="b"))).subject == "b"
    assert jwks_server.requests == 2


async def test_jwks_url_needs_a_trusted_certificate(jwks_server: JwksServer) -> None:
    key = new_signing_key("EdDSA")
    jwks_server.document = {"keys": [key.public_jwk()]}
    settings = AuthSettings(DEV_ISSUER, DEV_AUDIENCE, None, jwks_server.url())
    verifier = TokenVerifier(settings, JwksKeys.from_settings(settings))  # system trust store: not our CA
    await refused(verifier.verify(mint_token(key)), grpc.StatusCode.UNAVAILABLE, "AUTH_KEYS_UNAVAILABLE")
    assert jwks_server.requests == 0  # the handshake failed before any request


async def test_jwks_url_redirect_to_plain_http_is_refused(jwks_server: JwksServer, ca: trustme.CA) -> None:
    key = new_signing_key("EdDSA")
    jwks_server.document = {"keys": [key.public_jwk()]}
    settings = AuthSettings(DEV_ISSUER, DEV_AUDIENCE, None, jwks_server.url("/redirect"))
    verifier = TokenVerifier(settings, JwksKeys.from_settings(settings, ssl_context=client_context(ca)))
    await refused(verifier.verify(mint_token(key)), grpc.StatusCode.UNAVAILABLE, "AUTH_KEYS_UNAVAILABLE")
    assert jwks_server.requests == 1


# -- development tooling ------------------------------------------------------------------------


def test_ensure_signing_key_is_idempotent(tmp_path: Path) -> None:
    directory = tmp_path / ".tenantry"
    first = ensure_signing_key(directory, "ES256")
    again = ensure_signing_key(directory, "EdDSA")  # an existing key is kept
    assert again.kid == first.kid
    assert again.algorithm == "ES256"
    assert first.key_file is not None and first.jwks_file is not None
    assert first.key_file.stat().st_mode & 0o077 == 0
    assert json.loads(first.jwks_file.read_text()) == first.jwks()
    (published,) = json.loads(first.jwks_file.read_text())["keys"]
    assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}  # the public half only, no "d"
    first.jwks_file.unlink()
    ensure_signing_key(directory)
    assert json.loads(first.jwks_file.read_text()) == first.jwks()  # rewritten from the key


def test_parse_ttl() -> None:
    assert parse_ttl("90s") == timedelta(seconds=90)
    assert parse_ttl("30m") == timedelta(minutes=30)
    assert parse_ttl("1h") == timedelta(hours=1)
    assert parse_ttl("2d") == timedelta(days=2)
    for bad in ("", "0s", "1", "1w", "-1h", "1.5h"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


async def test_tenantry_token_prints_a_token_the_api_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENANTRY_AUTH_ISSUER", raising=False)
    monkeypatch.delenv("TENANTRY_AUTH_AUDIENCE", raising=False)
    directory = tmp_path / ".tenantry"
    tenantry_token(
        [
            "--dir",
            str(directory),
            "--scope",
            "projects.read projects.write",
            "--tenant",
            str(TENANT),
            "--ttl",
            "30m",
            "--sub",
            "bob",
        ]
    )
    token = capsys.readouterr().out.strip()
    verifier, _ = verifier_for(directory / "jwks.json")
    principal = await verifier.verify(token)
    assert principal.subject == "bob"
    assert principal.permissions == {"projects.read", "projects.write"}
    assert principal.tenant_id == TENANT
    assert 29 * 60 < principal.expires_at - time.time() <= 30 * 60
    tenantry_token(["--dir", str(directory)])
    admin = await verifier.verify(capsys.readouterr().out.strip())
    assert admin.subject == "dev"
    assert admin.permissions == {"tenantry.admin"}
    assert admin.tenant_id is None
    for bad in (["--ttl", "soon"], ["--tenant", "acme"], ["--scope", " "]):
        with pytest.raises(SystemExit) as exited:
            tenantry_token(["--dir", str(directory), *bad])
        assert exited.value.code == 2
