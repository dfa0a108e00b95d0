"""Input rules from the design, checked before anything touches the database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tenant_api.errors import FieldViolation, invalid_fields

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
RESERVED_SLUGS = frozenset({"public", "admin", "api", "www", "system"})
# Deliberately plain: printable ASCII, one @, a dotted domain. Anything exotic
# is refused rather than stored in a form some other system misreads.
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def slug_problem(slug: str) -> str | None:
    if not 3 <= len(slug) <= 40:
        return "must be 3-40 characters"
    if not SLUG_RE.fullmatch(slug):
        return "must match ^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
    if slug in RESERVED_SLUGS or slug.startswith("pg"):
        return "is reserved"
    return None


# Line/paragraph separators and the Unicode Bidi_Control characters (marks,
# embeddings, overrides, isolates): invisible, and able to make a name display
# as something else ("Trojan Source").
_INVISIBLE_CONTROLS = frozenset("\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _has_control_characters(text: str, allowed: str = "") -> bool:
    return any(
        ((ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) and c not in allowed) or c in _INVISIBLE_CONTROLS for c in text
    )


def display_text_problem(text: str, max_length: int = 100) -> str | None:
    trimmed = text.strip()
    if not 1 <= len(trimmed) <= max_length:
        return f"must be 1-{max_length} characters after trimming"
    if _has_control_characters(text):
        return "must not contain control characters"
    return None


def email_problem(email: str) -> str | None:
    if len(email) > 320 or not EMAIL_RE.fullmatch(email):
        return "must be a valid email address"
    return None


def parse_uuid(value: str) -> uuid.UUID | None:
    """A canonical UUID string, or None when it is not one."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value.lower() else None


@dataclass(frozen=True)
class RegistrationInput:
    slug: str
    display_name: str
    admin_email: str
    admin_display_name: str
    request_id: uuid.UUID | None


def validate_registration(
    slug: str, display_name: str, admin_email: str, admin_display_name: str, request_id: str
) -> RegistrationInput:
    def problems() -> Iterator[FieldViolation]:
        if (p := slug_problem(slug)) is not None:
            yield FieldViolation("slug", p)
        if (p := display_text_problem(display_name)) is not None:
            yield FieldViolation("display_name", p)
        if (p := email_problem(admin_email)) is not None:
            yield FieldViolation("admin_email", p)
        if (p := display_text_problem(admin_display_name)) is not None:
            yield FieldViolation("admin_display_name", p)
        if request_id and parse_uuid(request_id) is None:
            yield FieldViolation("request_id", "must be a UUID")

    violations = list(problems())
    if violations:
        raise invalid_fields(violations)
    return RegistrationInput(
        slug=slug,
        display_name=display_name.strip(),
        admin_email=admin_email,
        admin_display_name=admin_display_name.strip(),
        request_id=parse_uuid(request_id) if request_id else None,
    )


def require_uuid(field: str, value: str) -> uuid.UUID:
    parsed = parse_uuid(value)
    if parsed is None:
        raise invalid_fields([FieldViolation(field, "must be a UUID")])
    return parsed


def optional_uuid(field: str, value: str) -> uuid.UUID | None:
    return require_uuid(field, value) if value else None


def validate_project(name: str, description: str) -> tuple[str, str]:
    violations = []
    if (p := display_text_problem(name)) is not None:
        violations.append(FieldViolation("name", p))
    if len(description) > 2000:
        violations.append(FieldViolation("description", "must be at most 2000 characters"))
    elif _has_control_characters(description, allowed="\n\t"):
        violations.append(FieldViolation("description", "must not contain control characters"))
    if violations:
        raise invalid_fields(violations)
    return name.strip(), description
