"""Input rules from the design, checked before anything touches the database."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tenant_api.errors import FieldViolation, invalid_fields
from tenantry.settings import SHARD_NAME_PATTERN

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
RESERVED_SLUGS = frozenset({"public", "admin", "api", "www", "system"})
# A tenant's labels (RegisterTenant, UpdateTenant, ListTenants' filter).
MAX_LABELS = 64
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
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


# Unicode general categories no display text may contain: controls (Cc),
# format characters (Cf: zero-width space/joiner, bidi marks, embeddings,
# overrides and isolates ("Trojan Source"), BOM, soft hyphen, tags),
# surrogates (Cs), private use (Co), unassigned code points (Cn, which
# includes the noncharacters) and the line/paragraph separators (Zl, Zp).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

# Characters that are letters or symbols to Unicode but render as nothing
# (or as a blank): a name made only of these (plus spaces and combining
# marks) would look empty or impersonate another name padded with them.
BLANK_RENDERING = frozenset(
    "\u115f"  # HANGUL CHOSEONG FILLER
    "\u1160"  # HANGUL JUNGSEONG FILLER
    "\u2800"  # BRAILLE PATTERN BLANK
    "\u3164"  # HANGUL FILLER
    "\uffa0"  # HALFWIDTH HANGUL FILLER
    "\U0001d159"  # MUSICAL SYMBOL NULL NOTEHEAD
)


def _is_forbidden(c: str, allowed: str) -> bool:
    return c not in allowed and unicodedata.category(c) in _FORBIDDEN_CATEGORIES


def _is_visible(c: str) -> bool:
    """Renders as something on its own: not a space (Zs, U+2000-U+200A, the
    ideographic space ...), not a blank-rendering letter or symbol, and not a
    combining mark (variation selectors, the combining grapheme joiner and
    the like have nothing to combine with in a blank name)."""
    return not (c.isspace() or c in BLANK_RENDERING or unicodedata.category(c)[0] in "ZM")


def normalize_display_text(text: str) -> str:
    """The stored form of display text: NFC-normalised, then trimmed."""
    return unicodedata.normalize("NFC", text).strip()


def _text_problem(text: str, allowed: str = "") -> str | None:
    forbidden = sorted({c for c in text if _is_forbidden(c, allowed)})
    if forbidden:
        shown = ", ".join(f"U+{ord(c):04X}" for c in forbidden[:5])
        return f"must not contain control, format, private-use or unassigned characters ({shown})"
    return None


def display_text_problem(text: str, max_length: int = 100) -> str | None:
    """Why `text` is not acceptable display text (a tenant's, an admin's or a
    project's name), or None. Judged on `normalize_display_text(text)`, the
    form to store."""
    normalized = normalize_display_text(text)
    if not 1 <= len(normalized) <= max_length:
        return f"must be 1-{max_length} characters after trimming"
    if (p := _text_problem(unicodedata.normalize("NFC", text))) is not None:
        return p
    if not any(_is_visible(c) for c in normalized):
        return "must contain a visible character, not only blank-rendering ones"
    return None


def email_problem(email: str) -> str | None:
    if len(email) > 320 or not EMAIL_RE.fullmatch(email):
        return "must be a valid email address"
    return None


def label_problems(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(FieldViolation(field, f"must have at most {MAX_LABELS} entries"))
    for key, value in sorted(labels.items()):
        if not LABEL_KEY_RE.fullmatch(key):
            problems.append(FieldViolation(f"{field}[{key!r}]", "key must match ^[a-z][a-z0-9_.-]{0,62}$"))
        elif not LABEL_VALUE_RE.fullmatch(value):
            problems.append(FieldViolation(f"{field}[{key!r}]", "value must be at most 63 of [A-Za-z0-9_.-]"))
    return problems


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
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # None: placed on the shard with the fewest live tenants.
    shard: str | None = None


def validate_registration(
    slug: str,
    display_name: str,
    admin_email: str,
    admin_display_name: str,
    request_id: str,
    labels: Mapping[str, str] | None = None,
    shard: str = "",
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
        yield from label_problems(labels or {})
        if shard and not SHARD_NAME_PATTERN.fullmatch(shard):
            yield FieldViolation("shard", "not a shard name")

    violations = list(problems())
    if violations:
        raise invalid_fields(violations)
    return RegistrationInput(
        slug=slug,
        display_name=normalize_display_text(display_name),
        admin_email=admin_email,
        admin_display_name=normalize_display_text(admin_display_name),
        request_id=parse_uuid(request_id) if request_id else None,
        labels=dict(labels or {}),
        shard=shard or None,
    )


def require_uuid(field: str, value: str) -> uuid.UUID:
    parsed = parse_uuid(value)
    if parsed is None:
        raise invalid_fields([FieldViolation(field, "must be a UUID")])
    return parsed


def optional_uuid(field: str, value: str) -> uuid.UUID | None:
    return require_uuid(field, value) if value else None


def description_problem(description: str, max_length: int = 2000) -> str | None:
    """Why `description` is not acceptable, or None: free text that may be
    empty and may span lines (newline and tab allowed), otherwise under the
    display-text rules (NFC, no control/format/private-use/unassigned
    characters, not only blank-rendering characters). Judged and stored
    NFC-normalised but untrimmed: leading indentation may be meant."""
    normalized = unicodedata.normalize("NFC", description)
    if len(normalized) > max_length:
        return f"must be at most {max_length} characters"
    if (p := _text_problem(normalized, allowed="\n\t")) is not None:
        return p
    if normalized and not any(_is_visible(c) for c in normalized):
        return "must be empty or contain a visible character, not only blank-rendering ones"
    return None


def validate_project(name: str, description: str) -> tuple[str, str]:
    """The project's name (NFC, trimmed) and description (NFC) as stored."""
    violations = []
    if (p := display_text_problem(name)) is not None:
        violations.append(FieldViolation("name", p))
    if (p := description_problem(description)) is not None:
        violations.append(FieldViolation("description", p))
    if violations:
        raise invalid_fields(violations)
    return normalize_display_text(name), unicodedata.normalize("NFC", description)
