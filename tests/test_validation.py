"""Pure unit tests of the input rules: validation, page sizes and tokens, schema names."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import create_async_engine

from tenant_api import pagination
from tenant_api.errors import ApiError
from tenant_api.operations import workflow_id_from_name
from tenant_api.validation import (
    description_problem,
    display_text_problem,
    email_problem,
    normalize_display_text,
    optional_uuid,
    parse_uuid,
    require_uuid,
    slug_problem,
    validate_project,
    validate_registration,
)
from tenantry.db.models import Operation
from tenantry.schema_names import is_tenant_schema_name, quote_schema, schema_name_for

# Any: validate_registration's labels is a mapping, the other fields strings.
VALID: dict[str, Any] = {
    "slug": "acme-corp",
    "display_name": "Acme Corp",
    "admin_email": "ada@acme.example.com",
    "admin_display_name": "Ada Lovelace",
    "request_id": "",
}


def _violated_fields(error: ApiError) -> set[str]:
    return {v.field for v in error.violations}


def _assert_invalid(error: ApiError, *fields: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FIELD"
    assert _violated_fields(error) == set(fields)


# --- slugs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug",
    [
        "abc",
        "a1b",
        "acme",
        "acme-corp",
        "a-b-c",
        "a1-2b-c3",
        "x" * 40,
        "publicity",
        "administrator",
        "apis",
        "www2",
        "systems",
        "gp-tenant",
        "p-g",
        "apg",
    ],
)
def test_valid_slugs(slug: str) -> None:
    assert slug_problem(slug) is None


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "a",
        "ab",
        "x" * 41,
        "x" * 10_000,
        "1abc",
        "-abc",
        "abc-",
        "a--b",
        "Acme",
        "ACME",
        "ac_me",
        "ac.me",
        "ac me",
        " acme",
        "acme ",
        "acme\n",
        "acme\x00",
        "\x00acme",
        "ac\x00me",
        "a'; DROP TABLE tenants;--",
        "acme;",
        "ac/me",
        "../etc",
        "\u0430cme",  # Cyrillic a
        "acm\u0435",  # Cyrillic e
        "\uff41\uff43\uff4d\uff45",  # fullwidth acme
        "acme\u202e",  # right-to-left override
        "ac\u200bme",  # zero width space
        "acm\u00e9",  # e with acute
        "a\u0301cme",  # combining accent
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff41bc",
        "ß-tenant",
    ],
)
def test_invalid_slugs(slug: str) -> None:
    assert slug_problem(slug) is not None


@pytest.mark.parametrize("slug", ["public", "admin", "api", "www", "system", "pg-tenant", "pgx", "pg1", "pgadmin"])
def test_reserved_slugs(slug: str) -> None:
    assert slug_problem(slug) == "is reserved"


def test_slug_length_bounds_are_exact() -> None:
    assert slug_problem("abc") is None
    assert slug_problem("ab") is not None
    assert slug_problem("a" * 40) is None
    assert slug_problem("a" * 41) is not None


# --- display names -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "A",
        "Acme Corp",
        "  Acme  ",
        "x" * 100,
        " " + "x" * 100 + " ",  # 100 after trimming
        "Ünïcödé GmbH",
        "株式会社アクメ",
        "\uff21\uff43\uff4d\uff45",  # fullwidth letters are legitimate text
        "O'Brien; DROP TABLE tenants;--",  # harmless as data: parameters are bound
        "emoji \U0001f680",
        "\u2764\ufe0f Love",  # emoji presentation selector (a mark) with visible text
        "Acme\u3000Corp",  # ideographic space inside
        "Acme\u2002Corp",  # en space inside
        "Acme \u3164",  # a filler beside visible text: something visible remains
        "\u2800 Braille art \u2801",
        "Cafe\u0301",  # decomposed: valid, stored composed
        "\ud55c\uad6d",  # Hangul syllables
        "\u1100\u1161",  # conjoining jamo (NFC composes them)
    ],
)
def test_valid_display_text(text: str) -> None:
    assert display_text_problem(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\t \n",
        "\u3000",  # ideographic space only
        "x" * 101,
        "x" * 10_000,
        "Acme\x00",
        "Ac\x00me",
        "Acme\x07",
        "Acme\x1b[31m",
        "Acme\nCorp",
        "Acme\rCorp",
        "Acme\tCorp",
        "Acme\x7f",
        "Acme\x85",
        "Acme\x9f",
        "Acme\u2028Corp",
        "Acme\u2029Corp",
        "Acme\u202eproC",  # right-to-left override
        "Acme\u202a",  # left-to-right embedding
        "Acme\u2066x\u2069",  # isolates
        "Acme\u200f",  # right-to-left mark
        # Format characters (Cf): zero-width, BOM, soft hyphen, tags, ...
        "Ac\u200bme",  # zero width space
        "Ac\u200cme",  # zero width non-joiner
        "Ac\u200dme",  # zero width joiner
        "\ufeffAcme",  # BOM
        "Ac\u00adme",  # soft hyphen
        "Acme\u2060",  # word joiner
        "Acme\u2061",  # function application
        "Acme\u180e",  # Mongolian vowel separator
        "Acme\U000e0041",  # tag latin capital A
        "\U0001f3f4\U000e0067\U000e0062\U000e007f",  # tag sequence flag
        # Private use (Co), unassigned (Cn), noncharacters, surrogates (Cs)
        "Acme\ue000",
        "Acme\U000f0000",
        "Acme\U00100000",
        "Acme\u0378",  # unassigned
        "Acme\ufffe",  # noncharacter
        "Acme\ufdd0",  # noncharacter
        "Acme\ud800",  # lone surrogate
        # Made only of blank-rendering characters
        "\u2800",  # braille pattern blank
        "\u2800\u2800\u2800",
        "\u3164",  # Hangul filler
        "\u115f",
        "\u1160",
        "\u115f\u1160",
        "\uffa0",  # halfwidth Hangul filler
        "\U0001d159",  # null notehead
        "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a",  # the Unicode spaces
        "\u00a0",  # no-break space
        "\u202f\u205f",
        "\u1680",  # ogham space mark
        " \u3164 \u2800 ",
        "\u034f",  # combining grapheme joiner
        "\ufe0f",  # variation selector alone
        "\u0301\u0301",  # combining marks with nothing to combine with
        "\u17b4\u17b5",  # Khmer inherent vowels
        "\u3164" * 101,
    ],
)
def test_invalid_display_text(text: str) -> None:
    assert display_text_problem(text) is not None


def test_display_text_length_counts_the_nfc_form() -> None:
    # 100 decomposed e-acute are 200 code points but 100 characters after NFC.
    assert display_text_problem("e\u0301" * 100) is None
    assert display_text_problem("e\u0301" * 101) is not None
    assert normalize_display_text("  Cafe\u0301  ") == "Caf\u00e9"
    assert normalize_display_text("\u1100\u1161") == "\uac00"


def test_forbidden_characters_are_named_by_code_point() -> None:
    assert display_text_problem("Ac\u200dme") == (
        "must not contain control, format, private-use or unassigned characters (U+200D)"
    )
    assert display_text_problem("\u2800") == "must contain a visible character, not only blank-rendering ones"


def test_display_text_custom_max_length() -> None:
    assert display_text_problem("x" * 5, max_length=5) is None
    assert display_text_problem("x" * 6, max_length=5) == "must be 1-5 characters after trimming"


# --- emails ------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "a@b.co",
        "ada@example.com",
        "Ada.Lovelace+tenantry@Example.COM",
        "o'brien@example.ie",
        "x_y-z@sub.domain.example.org",
        "a" * 64 + "@example.com",
        "user@xn--bcher-kva.example",
    ],
)
def test_valid_emails(email: str) -> None:
    assert email_problem(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "@example.com",
        "ada@",
        "ada@example",
        "ada@@example.com",
        "ada@exa mple.com",
        " ada@example.com",
        "ada@example.com ",
        "ada@example.com\n",
        "ada\x00@example.com",
        "ada@example.com\x00",
        "a" * 65 + "@example.com",
        "ada@" + "a" * 64 + ".com",
        "ada@-example.com",
        "ada@example-.com",
        "ada@example..com",
        "ada@.example.com",
        "\uff41da@example.com",  # fullwidth a
        "ad\u0430@example.com",  # Cyrillic a
        "ada@ex\u0430mple.com",
        "ada@b\u00fccher.example",
        "ada@example.com\u202e",
        "a'; DROP TABLE users;--@example.com",
        "x@" + ("a" * 60 + ".") * 6 + "com",  # over 320 characters
        "ada@[127.0.0.1]",
        '"ada"@example.com',
    ],
)
def test_invalid_emails(email: str) -> None:
    assert email_problem(email) is not None


# --- UUIDs -------------------------------------------------------------------


def test_parse_uuid_accepts_canonical_forms() -> None:
    value = uuid.uuid4()
    assert parse_uuid(str(value)) == value
    assert parse_uuid(str(value).upper()) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "12345",
        "00000000000000000000000000000000",  # hex without dashes
        "{00000000-0000-0000-0000-000000000000}",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        " 00000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-000000000000 ",
        "00000000-0000-0000-0000-000000000000\x00",
        "00000000-0000-0000-0000-00000000000g",
        "0000000-00000-0000-0000-000000000000",
        "\uff10" * 8 + "-0000-0000-0000-000000000000",
        "x" * 10_000,
    ],
)
def test_parse_uuid_rejects_non_canonical(text: str) -> None:
    assert parse_uuid(text) is None


def test_require_and_optional_uuid() -> None:
    value = uuid.uuid4()
    assert require_uuid("tenant_id", str(value)) == value
    assert optional_uuid("request_id", "") is None
    assert optional_uuid("request_id", str(value)) == value
    with pytest.raises(ApiError) as caught:
        require_uuid("tenant_id", "")
    _assert_invalid(caught.value, "tenant_id")
    with pytest.raises(ApiError) as caught:
        optional_uuid("request_id", "nope")
    _assert_invalid(caught.value, "request_id")


# --- whole registrations -----------------------------------------------------


def test_validate_registration_trims_and_parses() -> None:
    request_id = uuid.uuid4()
    result = validate_registration(
        "acme-corp", "  Acme Corp  ", "Ada@Acme.example.com", " Ada ", str(request_id).upper()
    )
    assert result.slug == "acme-corp"
    assert result.display_name == "Acme Corp"
    assert result.admin_email == "Ada@Acme.example.com"
    assert result.admin_display_name == "Ada"
    assert result.request_id == request_id
    assert validate_registration(**VALID).request_id is None


def test_validate_registration_stores_the_nfc_form() -> None:
    result = validate_registration(**{**VALID, "display_name": " Cafe\u0301 ", "admin_display_name": "Zoe\u0308"})
    assert result.display_name == "Caf\u00e9"
    assert result.admin_display_name == "Zo\u00eb"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slug", "pg-admin"),
        ("slug", "a\x00b"),
        ("slug", ""),
        ("display_name", ""),
        ("display_name", "x\x00"),
        ("display_name", "x" * 101),
        ("admin_email", "nope"),
        ("admin_email", ""),
        ("admin_display_name", "   "),
        ("admin_display_name", "Ada\u202e"),
        ("display_name", "\u2800"),
        ("display_name", "Ac\u200dme"),
        ("display_name", "\ufeffAcme"),
        ("display_name", "\u3164\u3164"),
        ("display_name", "Acme\ue000"),
        ("admin_display_name", "\u3164"),
        ("admin_display_name", "\u115f\u1160"),
        ("admin_display_name", "Ada\u200b"),
        ("admin_display_name", "Ada\U000e0001"),
        ("request_id", "not-a-uuid"),
        ("request_id", "\x00"),
    ],
)
def test_validate_registration_names_the_bad_field(field: str, value: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate_registration(**{**VALID, field: value})
    _assert_invalid(caught.value, field)
    assert caught.value.metadata == {"fields": field}


def test_validate_registration_reports_every_bad_field() -> None:
    with pytest.raises(ApiError) as caught:
        validate_registration("", "", "", "", "x")
    _assert_invalid(caught.value, "slug", "display_name", "admin_email", "admin_display_name", "request_id")


def test_validate_project() -> None:
    assert validate_project("  Apollo ", "line one\n\tline two") == ("Apollo", "line one\n\tline two")
    assert validate_project("Apollo", "") == ("Apollo", "")
    with pytest.raises(ApiError) as caught:
        validate_project("", "d" * 2001)
    _assert_invalid(caught.value, "name", "description")
    with pytest.raises(ApiError) as caught:
        validate_project("Apollo", "bad\x00byte")
    _assert_invalid(caught.value, "description")


def test_validate_project_normalises_to_nfc() -> None:
    # The name is trimmed, the description kept as written (but composed).
    assert validate_project(" Apollo\u0301 ", "  Cafe\u0301\n") == ("Apoll\u00f3", "  Caf\u00e9\n")


@pytest.mark.parametrize(
    ("name", "description", "fields"),
    [
        ("\u2800", "", {"name"}),
        ("\u3164", "fine", {"name"}),
        ("Apo\u200bllo", "", {"name"}),
        ("\ufeffApollo", "", {"name"}),
        ("Apollo\ue000", "", {"name"}),
        ("Apollo", "zero\u200dwidth", {"description"}),
        ("Apollo", "bidi \u202e", {"description"}),
        ("Apollo", "\u2800\u2800", {"description"}),
        ("Apollo", "\u3164\n\u3164", {"description"}),
        ("Apollo", "private \U000f0001", {"description"}),
        ("Apollo", "unassigned \u0378", {"description"}),
        ("Apollo", "line\u2028separator", {"description"}),
        ("\u115f", "\u2800", {"name", "description"}),
    ],
)
def test_validate_project_rejects_invisible_text(name: str, description: str, fields: set[str]) -> None:
    with pytest.raises(ApiError) as caught:
        validate_project(name, description)
    _assert_invalid(caught.value, *fields)


@pytest.mark.parametrize("description", ["", "plain", "line one\n\tline two", "  indented", "\u2800 art \u2800"])
def test_valid_descriptions(description: str) -> None:
    assert description_problem(description) is None


# --- page sizes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"), [(0, 50), (1, 1), (2, 2), (50, 50), (499, 499), (500, 500), (501, 500), (2**31 - 1, 500)]
)
def test_page_size(requested: int, expected: int) -> None:
    assert pagination.page_size(requested) == expected


@pytest.mark.parametrize("requested", [-1, -50, -(2**31)])
def test_negative_page_size_is_invalid(requested: int) -> None:
    with pytest.raises(ApiError) as caught:
        pagination.page_size(requested)
    _assert_invalid(caught.value, "page_size")


# --- page tokens -------------------------------------------------------------

KEY = bytes(range(32))
TOKENS = pagination.PageTokens(KEY)
POSITION = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signed(payload: bytes, query: str = "tenants:0") -> str:
    """A payload signed with TOKENS' key: what only we could issue, malformed or not."""
    return _b64(payload + TOKENS._tag(query, payload))


def _signed_json(data: object, query: str = "tenants:0") -> str:
    return _signed(json.dumps(data).encode(), query)


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


def _micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_page_token_round_trip() -> None:
    key = uuid.uuid4()
    token = TOKENS.encode(POSITION, str(key), "tenants:0")
    assert TOKENS.decode(token, "tenants:0", uuid.UUID) == (POSITION, key)
    # URL-safe, unpadded, compact, and it does not spell out its content.
    assert token.replace("-", "").replace("_", "").isalnum()
    assert "=" not in token
    assert len(token) < 140
    assert str(key) not in token
    # Positions come back in UTC whatever offset they had.
    shifted = POSITION.astimezone(timezone(timedelta(hours=2)))
    decoded = TOKENS.decode(TOKENS.encode(shifted, str(key), "q"), "q", uuid.UUID)
    assert decoded == (POSITION, key) and decoded[0] is not None and decoded[0].utcoffset() == timedelta(0)
    # Unpositioned listings (the event feed) carry the key alone.
    assert TOKENS.decode(TOKENS.encode(None, "42", "events:"), "events:", int, positioned=False) == (None, 42)


def test_empty_token_means_first_page() -> None:
    assert TOKENS.decode("", "tenants:0", uuid.UUID) is None


def test_token_cannot_be_replayed_on_another_query() -> None:
    token = TOKENS.encode(POSITION, str(uuid.uuid4()), "tenants:0")
    with pytest.raises(ApiError) as caught:
        TOKENS.decode(token, "tenants:1", uuid.UUID)
    _assert_invalid(caught.value, "page_token")
    op_token = TOKENS.encode(POSITION, "tenant-provision-x", "operations::")
    with pytest.raises(ApiError) as caught:
        TOKENS.decode(op_token, "operations::SUCCEEDED", str)
    _assert_invalid(caught.value, "page_token")
    # The tenant is part of the query of tenant-scoped listings.
    project_token = TOKENS.encode(POSITION, str(uuid.uuid4()), f"projects:{uuid.UUID(int=1)}")
    with pytest.raises(ApiError) as caught:
        TOKENS.decode(project_token, f"projects:{uuid.UUID(int=2)}", uuid.UUID)
    _assert_invalid(caught.value, "page_token")


def test_another_key_refuses_the_token() -> None:
    token = TOKENS.encode(POSITION, str(uuid.uuid4()), "tenants:0")
    with pytest.raises(ApiError) as caught:
        pagination.PageTokens(bytes(reversed(KEY))).decode(token, "tenants:0", uuid.UUID)
    _assert_invalid(caught.value, "page_token")
    assert pagination.PageTokens(KEY).decode(token, "tenants:0", uuid.UUID) is not None


def test_tokens_expire_after_their_lifetime() -> None:
    # Issue times are whole seconds.
    issued = POSITION.replace(microsecond=0)
    now = [issued]
    tokens = pagination.PageTokens(KEY, lifetime=timedelta(minutes=10), clock=lambda: now[0])
    token = tokens.encode(POSITION, "w", "ops")
    now[0] += timedelta(minutes=10)
    assert tokens.decode(token, "ops", str) == (POSITION, "w")
    now[0] += timedelta(seconds=1)
    with pytest.raises(ApiError) as caught:
        tokens.decode(token, "ops", str)
    _assert_invalid(caught.value, "page_token")
    assert "expired" in caught.value.violations[0].description
    # Issued more than the allowed clock skew in the future: refused too.
    now[0] = issued - pagination.CLOCK_SKEW - timedelta(seconds=1)
    with pytest.raises(ApiError):
        tokens.decode(token, "ops", str)


def test_a_short_key_or_no_lifetime_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        pagination.PageTokens(bytes(31))
    with pytest.raises(ValueError):
        pagination.PageTokens(KEY, lifetime=timedelta(0))
    assert KEY.hex() not in repr(TOKENS)


GOOD = [_now(), str(uuid.UUID(int=1)), _micros(POSITION)]

GARBAGE_TOKENS = [
    "x",
    "!!!!",
    "====",
    "not a token",
    "\u00e9\u00e9\u00e9\u00e9",
    "\x00\x00\x00\x00",
    "A" * (pagination.MAX_TOKEN_CHARS + 1),
    _b64(b"\xff\xfe\xfd\xfc"),
    _b64(b"{"),
    _b64(b"[" * 100_000),
    # Unsigned: the format of before, and today's payload without its tag.
    _b64(json.dumps({"p": POSITION.isoformat(), "k": str(uuid.UUID(int=1)), "q": "tenants:0"}).encode()),
    _b64(json.dumps(GOOD).encode()),
    _b64(json.dumps(GOOD).encode() + bytes(32)),
    # Signed, yet malformed: only a bug of ours could issue these, and still no crash.
    _signed(b"{"),
    _signed(b"\xff\xfe"),
    _signed(b"null"),
    _signed(b"42"),
    _signed(b"[]"),
    _signed(b"{}"),
    _signed(b"[" * 100_000),  # deeply nested JSON must not blow the stack
    _signed(b"[" + b"9" * 5000 + b"]"),  # an int too long to parse
    _signed_json([_now()]),
    _signed_json([_now(), str(uuid.UUID(int=1))]),  # an unpositioned token
    _signed_json([*GOOD, 1]),
    _signed_json([str(_now()), *GOOD[1:]]),
    _signed_json([True, *GOOD[1:]]),
    _signed_json([10**30, *GOOD[1:]]),  # issued at no representable time
    _signed_json([_now(), "not-a-uuid", GOOD[2]]),
    _signed_json([_now(), 7, GOOD[2]]),
    _signed_json([_now(), None, GOOD[2]]),
    _signed_json([_now(), GOOD[1], "2024-05-17T12:30:45+00:00"]),
    _signed_json([_now(), GOOD[1], 1.5]),
    _signed_json([_now(), GOOD[1], None]),
    _signed_json([_now(), GOOD[1], 10**30]),  # beyond year 9999
    _signed_json([_now(), GOOD[1], -(10**30)]),  # before year 1
]

OPERATION_GARBAGE_TOKENS = [
    _signed_json([_now(), key, _micros(POSITION)], "operations::")
    for key in ("\x00", "tenant-provision-\x00", "\ud800", "a\nb", "\x1b[2J")
]


@pytest.mark.parametrize("token", GARBAGE_TOKENS, ids=lambda v: repr(v)[:40])
def test_garbage_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        TOKENS.decode(token, "tenants:0", uuid.UUID)
    _assert_invalid(caught.value, "page_token")


@pytest.mark.parametrize("token", OPERATION_GARBAGE_TOKENS)
def test_operation_tokens_with_unprintable_keys_are_invalid(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        TOKENS.decode(token, "operations::", str)
    _assert_invalid(caught.value, "page_token")


def test_well_formed_signed_token_is_accepted() -> None:
    # The control for GARBAGE_TOKENS: the same construction with nothing wrong decodes.
    assert TOKENS.decode(_signed_json(GOOD), "tenants:0", uuid.UUID) == (POSITION, uuid.UUID(int=1))


# --- keyset pagination --------------------------------------------------------

_OPERATIONS_KEYSET: pagination.Keyset[Operation, str] = pagination.Keyset(
    Operation.create_time, Operation.workflow_id, str, lambda o: (o.create_time, o.workflow_id), descending=True
)


# Never connects: only its dialect renders SQL.
_DIALECT = create_async_engine("postgresql+asyncpg://").dialect


def _sql(query: Select[Operation]) -> str:
    return str(query.compile(dialect=_DIALECT))


def test_keyset_first_page_orders_and_fetches_one_row_past_the_page() -> None:
    sql = _sql(_OPERATIONS_KEYSET.select(select(Operation), pagination.PageRequest(3, "", "ops", TOKENS)))
    assert "ORDER BY workflow_executions.create_time DESC, workflow_executions.workflow_id DESC" in sql
    assert "LIMIT" in sql
    assert "WHERE" not in sql


def test_keyset_next_page_starts_after_the_token_row() -> None:
    descending = _sql(
        _OPERATIONS_KEYSET.select(
            select(Operation), pagination.PageRequest(3, TOKENS.encode(POSITION, "w", "ops"), "ops", TOKENS)
        )
    )
    assert "(workflow_executions.create_time, workflow_executions.workflow_id) < (" in descending
    ascending_keyset: pagination.Keyset[Operation, str] = pagination.Keyset(
        Operation.create_time, Operation.workflow_id, str, lambda o: (o.create_time, o.workflow_id)
    )
    ascending = _sql(
        ascending_keyset.select(
            select(Operation), pagination.PageRequest(3, TOKENS.encode(POSITION, "w", "ops"), "ops", TOKENS)
        )
    )
    assert "ORDER BY workflow_executions.create_time, workflow_executions.workflow_id" in ascending
    assert "(workflow_executions.create_time, workflow_executions.workflow_id) > (" in ascending


def test_keyset_page_token_is_the_last_row_of_the_page() -> None:
    rows = [Operation(workflow_id=f"w-{i}", create_time=POSITION - timedelta(seconds=i)) for i in range(3)]
    request = pagination.PageRequest(2, "", "ops", TOKENS)
    page, token = _OPERATIONS_KEYSET.page(rows, request)
    assert page == rows[:2]
    assert TOKENS.decode(token, "ops", str) == (rows[1].create_time, "w-1")
    assert _OPERATIONS_KEYSET.page(rows[:2], request) == (rows[:2], "")


# --- schema names ------------------------------------------------------------


def test_schema_name_is_derived_from_the_id() -> None:
    tenant_id = uuid.uuid4()
    name = schema_name_for(tenant_id)
    assert name == "t_" + tenant_id.hex
    assert len(name.encode()) == 34 < 63
    assert is_tenant_schema_name(name)
    assert quote_schema(name) == f'"{name}"'
    assert schema_name_for(uuid.UUID(int=0)) == "t_" + "0" * 32


def test_distinct_ids_give_distinct_schema_names() -> None:
    ids = [uuid.uuid4() for _ in range(1000)]
    assert len({schema_name_for(i) for i in ids}) == len(ids)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "public",
        "pg_catalog",
        "information_schema",
        "t_",
        "t_" + "0" * 31,
        "t_" + "0" * 33,
        "t_" + "A" * 32,
        "T_" + "0" * 32,
        "t-" + "0" * 32,
        "t_" + "g" * 32,
        "t_" + "0" * 32 + "\n",
        "t_" + "0" * 32 + '"; DROP SCHEMA public CASCADE; --',
        '"t_' + "0" * 32 + '"',
        "t_" + "0" * 31 + "\x00",
        "t_" + "\uff10" * 32,
        "acme-corp",
    ],
)
def test_quote_schema_refuses_non_tenant_names(name: str) -> None:
    assert not is_tenant_schema_name(name)
    with pytest.raises(ValueError, match="not a tenant schema name"):
        quote_schema(name)


# --- operation names ---------------------------------------------------------


def test_operation_name_round_trip() -> None:
    assert workflow_id_from_name("operations/tenant-provision-abc") == "tenant-provision-abc"
    assert workflow_id_from_name("operations/" + "x" * 200) == "x" * 200


@pytest.mark.parametrize(
    "name",
    [
        "",
        "operations/",
        "tenant-provision-abc",
        "operation/tenant-provision-abc",
        "Operations/tenant-provision-abc",
        "operations/" + "x" * 201,
        "operations/\x00",
        "operations/tenant-provision-\x00",
        "operations/a\nb",
        "operations/\x7f",
    ],
)
def test_bad_operation_names(name: str) -> None:
    with pytest.raises(ApiError) as caught:
        workflow_id_from_name(name)
    _assert_invalid(caught.value, "name")
