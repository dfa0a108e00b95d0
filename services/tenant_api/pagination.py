"""Page sizes and opaque keyset page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from tenant_api.errors import ApiError, FieldViolation, invalid_fields

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

Key = TypeVar("Key")


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_fields([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: datetime, key: str, query: str) -> str:
    """`query` fingerprints the filters, so a token cannot be replayed on another query."""
    raw = json.dumps({"p": position.isoformat(), "k": key, "q": query}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, query: str, parse_key: Callable[[str], Key]) -> tuple[datetime, Key] | None:
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
