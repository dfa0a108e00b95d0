"""Input rules of the tenant lifecycle calls: labels, UpdateTenant's field
mask, SuspendTenant's reason and ListTenants' filter, checked before anything
touches the database."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from tenant_api.errors import FieldViolation, invalid_field, invalid_fields

# The label rules live with the other input rules (RegisterTenant uses them too).
from tenant_api.validation import (
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    display_text_problem,
    label_problems,
    normalize_display_text,
)
from tenantry.states import GONE_TENANT_STATES, TenantState

MAX_REASON_LENGTH = 500
# UpdateTenant's field mask paths (AIP-134); `labels` replaces the whole map.
UPDATABLE_PATHS = ("display_name", "labels")


@dataclass(frozen=True)
class TenantUpdate:
    display_name: str | None
    labels: dict[str, str] | None

    def values(self) -> dict[str, object]:
        values: dict[str, object] = {}
        if self.display_name is not None:
            values["display_name"] = self.display_name
        if self.labels is not None:
            values["labels"] = self.labels
        return values


def validate_update(paths: Sequence[str], display_name: str, labels: Mapping[str, str]) -> TenantUpdate:
    """The fields `paths` names, validated; an empty mask or an unknown path
    is INVALID_ARGUMENT (no "update everything" default)."""
    if not paths:
        raise invalid_field("update_mask", f"name the fields to update: {', '.join(UPDATABLE_PATHS)}")
    unknown = [path for path in paths if path not in UPDATABLE_PATHS]
    if unknown:
        raise invalid_field(
            "update_mask",
            f"unknown or immutable path(s) {', '.join(map(repr, unknown))}; updatable: {', '.join(UPDATABLE_PATHS)}",
        )

    def problems() -> Iterator[FieldViolation]:
        if "display_name" in paths and (p := display_text_problem(display_name)) is not None:
            yield FieldViolation("tenant.display_name", p)
        if "labels" in paths:
            yield from label_problems(labels, "tenant.labels")

    violations = list(problems())
    if violations:
        raise invalid_fields(violations)
    return TenantUpdate(
        display_name=normalize_display_text(display_name) if "display_name" in paths else None,
        labels=dict(labels) if "labels" in paths else None,
    )


def validate_reason(reason: str) -> str:
    if (p := display_text_problem(reason, MAX_REASON_LENGTH)) is not None:
        raise invalid_field("reason", p)
    return normalize_display_text(reason)


@dataclass(frozen=True)
class TenantFilter:
    states: frozenset[TenantState]
    labels: dict[str, str]

    def fingerprint(self) -> str:
        """Canonical text for the page token: equal filters, equal fingerprints."""
        terms = [f"state={state}" for state in sorted(self.states)]
        terms += [f"label.{key}={value}" for key, value in sorted(self.labels.items())]
        return " AND ".join(terms)


_TERM_RE = re.compile(r"(state|label\.([^=\s]+))=(\S*)")
_STATE_PREFIX = "TENANT_STATE_"


def parse_filter(text: str, show_deleted: bool) -> TenantFilter:
    """`state=<STATE>` and `label.<key>=<value>` terms joined by ` AND `."""
    states: set[TenantState] = set()
    labels: dict[str, str] = {}
    if not text.strip():
        return TenantFilter(frozenset(), {})
    for term in text.strip().split(" AND "):
        match = _TERM_RE.fullmatch(term.strip())
        if match is None:
            raise invalid_field(
                "filter", f"bad term {term.strip()!r}: use state=<STATE> or label.<key>=<value>, joined by ' AND '"
            )
        if match.group(1) == "state":
            name = match.group(3).upper().removeprefix(_STATE_PREFIX)
            try:
                state = TenantState(name)
            except ValueError:
                raise invalid_field("filter", f"unknown state {match.group(3)!r}") from None
            if state in GONE_TENANT_STATES and not show_deleted:
                raise invalid_field("filter", f"state={state} needs show_deleted")
            states.add(state)
        else:
            key, value = match.group(2), match.group(3)
            if not LABEL_KEY_RE.fullmatch(key) or not LABEL_VALUE_RE.fullmatch(value):
                raise invalid_field("filter", f"bad label term {term.strip()!r}")
            if key in labels and labels[key] != value:
                raise invalid_field("filter", f"label {key!r} is given two values")
            labels[key] = value
    if len(states) > 1:
        # Terms are AND-ed: two different states can never both match.
        raise invalid_field("filter", "at most one state term (terms are AND-ed)")
    return TenantFilter(frozenset(states), labels)
