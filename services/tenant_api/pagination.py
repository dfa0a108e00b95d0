"""Page sizes, signed keyset page tokens, and keyset pagination itself."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, tuple_

from tenant_api.errors import ApiError, FieldViolation, invalid_fields

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# How long a next_page_token stays good: long enough to page through a listing,
# short enough that a leaked token is soon worthless.
TOKEN_LIFETIME = timedelta(hours=1)
# Issue times up to this far in the future are accepted: replicas' clocks differ a little.
CLOCK_SKEW = timedelta(minutes=5)
# Refused before any decoding. Our tokens are 90-140 characters (keys are ids of at most 200).
MAX_TOKEN_CHARS = 2048
MIN_KEY_BYTES = 32
_TAG_BYTES = hashlib.sha256().digest_size
# Domain separation: this key signs page tokens of this format and nothing else.
_CONTEXT = b"tenantry page token v1\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Key = TypeVar("Key")
Row = TypeVar("Row")
Columns = TypeVarTuple("Columns")


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_fields([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _now() -> datetime:
    return datetime.now(UTC)


class PageTokens:
    """Issues and checks page tokens: base64url of a compact JSON payload (issue
    time, the last row's key and position) followed by an HMAC-SHA256 tag over
    that payload AND the query the token pages. The query fingerprints the
    listing, its filters and, for tenant-scoped listings, the admitted tenant,
    so a token is good only for the query (and tenant) that produced it, only
    from an API holding the same key, and only for `lifetime`.

    Built once at start from TENANTRY_PAGE_TOKEN_KEY (every replica behind one
    address needs the same key) and handed to the listing logic. `clock` is for
    tests."""

    def __init__(
        self, key: bytes, *, lifetime: timedelta = TOKEN_LIFETIME, clock: Callable[[], datetime] = _now
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a page token key needs at least {MIN_KEY_BYTES} bytes")
        if lifetime <= timedelta(0):
            raise ValueError("a page token lifetime must be positive")
        self._key = key
        self._lifetime = lifetime
        self._clock = clock

    def __repr__(self) -> str:
        return f"PageTokens(lifetime={self._lifetime})"

    def _tag(self, query: str, payload: bytes) -> bytes:
        mac = hmac.new(self._key, _CONTEXT, hashlib.sha256)
        encoded = query.encode("utf-8", "surrogatepass")
        # Length-prefixed: no (query, payload) pair signs like another.
        mac.update(len(encoded).to_bytes(4, "big"))
        mac.update(encoded)
        mac.update(payload)
        return mac.digest()

    def encode(self, position: datetime | None, key: str, query: str) -> str:
        """The token of the row at (`position`, `key`) in `query`'s order."""
        issued = int(self._clock().timestamp())
        fields: list[Any] = [issued, key]
        if position is not None:
            fields.append((position - _EPOCH) // _MICROSECOND)
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(payload + self._tag(query, payload)).decode().rstrip("=")

    def decode(
        self, token: str, query: str, parse_key: Callable[[str], Key], *, positioned: bool = True
    ) -> tuple[datetime | None, Key] | None:
        """The (position, key) a token from `encode` carries; None for ""
        (the first page). Anything else, and any token not issued by this key
        for this query or older than the lifetime: INVALID_ARGUMENT on page_token."""
        if not token:
            return None
        try:
            issued, fields = self._verified_fields(token, query)
            age = self._clock().timestamp() - issued
        # RecursionError: deeply nested JSON (only reachable with the key, but never INTERNAL).
        except (ValueError, TypeError, UnicodeError, binascii.Error, RecursionError, OverflowError) as exc:
            raise _bad_token() from exc
        if age < -CLOCK_SKEW.total_seconds():
            raise _bad_token()
        if age > self._lifetime.total_seconds():
            raise invalid_fields(
                [FieldViolation("page_token", f"has expired (after {self._lifetime}); list again from the first page")]
            )
        try:
            return _cursor(fields, parse_key, positioned)
        except (ValueError, KeyError, TypeError, UnicodeError, RecursionError, OverflowError) as exc:
            raise _bad_token() from exc

    def _verified_fields(self, token: str, query: str) -> tuple[int, list[Any]]:
        """The payload's issue time and fields, once its tag is checked (before
        that, nothing of it is parsed)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("token too long")
        padded = token.encode("ascii") + b"=" * (-len(token) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not payload or not hmac.compare_digest(tag, self._tag(query, payload)):
            raise ValueError("not issued by this key for this query")
        fields: Any = json.loads(payload)
        if not isinstance(fields, list) or not fields or type(fields[0]) is not int:
            raise ValueError("malformed payload")
        return fields[0], fields


def _cursor(fields: list[Any], parse_key: Callable[[str], Key], positioned: bool) -> tuple[datetime | None, Key]:
    if len(fields) != (3 if positioned else 2) or not isinstance(fields[1], str):
        raise ValueError("token of another kind of listing")
    key: str = fields[1]
    if not key.isprintable():
        # NUL or lone surrogates cannot even be sent to PostgreSQL.
        raise ValueError("key is not printable")
    if not positioned:
        return None, parse_key(key)
    if type(fields[2]) is not int:
        raise ValueError("position is not microseconds")
    # Overflows here, not in the driver.
    return _EPOCH + fields[2] * _MICROSECOND, parse_key(key)


def _bad_token() -> ApiError:
    return invalid_fields([FieldViolation("page_token", "is not a token from a previous response of this query")])


@dataclass(frozen=True)
class PageRequest:
    size: int
    token: str
    # Fingerprints the listing, its filters and, for tenant-scoped listings,
    # the admitted tenant: a token is good for this query only (see PageTokens).
    query: str
    # The API's signer, built once at start.
    tokens: PageTokens


@dataclass(frozen=True)
class Keyset(Generic[Row, Key]):
    """A listing's keyset order: by `position`, ties broken by the unique `key`,
    both ascending or both descending (no `position`: by `key` alone). A page
    is one indexed range scan from the previous page's last row (no OFFSET);
    the token carries that row's cursor."""

    position: SQLColumnExpression[datetime] | None
    key: SQLColumnExpression[Any]
    # The token's key text back to the key column's type.
    parse_key: Callable[[str], Key]
    # A result row's (position, key); the key is encoded with str().
    cursor: Callable[[Row], tuple[datetime | None, object]]
    descending: bool = False

    def select(self, query: Select[*Columns], request: PageRequest) -> Select[*Columns]:
        """`query` in keyset order, from after the token's row, one row past
        the page (which says whether there is a next page)."""
        after = request.tokens.decode(
            request.token, request.query, self.parse_key, positioned=self.position is not None
        )
        columns = (self.key,) if self.position is None else (self.position, self.key)
        query = query.order_by(*(column.desc() for column in columns) if self.descending else columns)
        if after is not None:
            bound = (after[1],) if self.position is None else after
            cursor, limit = tuple_(*columns), tuple_(*bound)
            query = query.where(cursor < limit if self.descending else cursor > limit)
        return query.limit(request.size + 1)

    def page(self, rows: Sequence[Row], request: PageRequest) -> tuple[list[Row], str]:
        """The page out of `select`'s rows, and the next page's token ("" after the last)."""
        if len(rows) <= request.size:
            return list(rows), ""
        page = list(rows[: request.size])
        position, key = self.cursor(page[-1])
        return page, request.tokens.encode(position, str(key), request.query)
