"""Page sizes, opaque keyset page tokens, and keyset pagination itself."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, tuple_

from tenant_api.errors import ApiError, FieldViolation, invalid_fields

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

Key = TypeVar("Key")
Row = TypeVar("Row")
Columns = TypeVarTuple("Columns")


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_fields([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: datetime | None, key: str, query: str) -> str:
    """`query` fingerprints the filters, so a token cannot be replayed on another query."""
    fields = {"k": key, "q": query} if position is None else {"p": position.isoformat(), "k": key, "q": query}
    raw = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(
    token: str, query: str, parse_key: Callable[[str], Key], *, positioned: bool = True
) -> tuple[datetime | None, Key] | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data: Any = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if data["q"] != query or not isinstance(data["k"], str):
            raise ValueError("token belongs to another query")
        if not data["k"].isprintable():
            # NUL or lone surrogates cannot even be sent to PostgreSQL.
            raise ValueError("key is not printable")
        if not positioned:
            if "p" in data:
                raise ValueError("token of a positioned listing")
            return None, parse_key(data["k"])
        position = datetime.fromisoformat(data["p"])
        if position.tzinfo is None:
            raise ValueError("naive timestamp")
        # UTC, as we encode them; a forged extreme offset overflows here, not in the driver.
        position = position.astimezone(UTC)
        return position, parse_key(data["k"])
    # RecursionError: deeply nested JSON in a forged token.
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error, RecursionError, OverflowError) as exc:
        raise _bad_token() from exc


def _bad_token() -> ApiError:
    return invalid_fields([FieldViolation("page_token", "is not a token from a previous response of this query")])


@dataclass(frozen=True)
class PageRequest:
    size: int
    token: str
    # Fingerprints the listing and its filters (see encode_token).
    query: str


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
        after = decode_token(request.token, request.query, self.parse_key, positioned=self.position is not None)
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
        return page, encode_token(position, str(key), request.query)
