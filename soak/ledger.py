"""Every call the soak's clients made and what it answered: the acknowledged
responses are what the invariants are checked against, and a violation names
the entries involved so the run can be replayed from its seed."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# The codes that mean a bug on the server, never an answer.
BUG_CODES = ("INTERNAL", "UNKNOWN")


@dataclass
class Entry:
    seq: int
    t: float
    client: str
    rpc: str
    code: str
    reason: str = ""
    tenant_id: str = ""
    request_id: str = ""
    # What the answer said (state after the call, the tenant's etag, a project id, ...).
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def acknowledged(self) -> bool:
        return self.code == "OK"


@dataclass
class Violation:
    invariant: str
    message: str
    entries: list[int] = field(default_factory=list)


@dataclass
class Ledger:
    started: float = field(default_factory=time.monotonic)
    entries: list[Entry] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    # Faults as (seconds since the start, name, phase) for the chart and the report.
    faults: list[tuple[float, str, str]] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)

    def now(self) -> float:
        return time.monotonic() - self.started

    def record(self, client: str, rpc: str, code: str, **fields: Any) -> Entry:
        entry = Entry(len(self.entries), self.now(), client, rpc, code, **fields)
        self.entries.append(entry)
        if code in BUG_CODES:
            self.violate("no_internal_or_unknown", f"{rpc} answered {code}: {fields.get('reason', '')}", [entry])
        return entry

    def check(self, invariant: str, ok: bool, message: str, entries: list[Entry] | None = None) -> None:
        """Counts one check of `invariant`; records a violation when it failed."""
        self.checked[invariant] += 1
        if not ok:
            self.violate(invariant, message, entries or [])

    def violate(self, invariant: str, message: str, entries: list[Entry]) -> None:
        self.violations.append(Violation(invariant, message, [e.seq for e in entries]))

    def fault(self, name: str, phase: str) -> None:
        self.faults.append((self.now(), name, phase))

    def for_tenant(self, tenant_id: str) -> list[Entry]:
        return [e for e in self.entries if e.tenant_id == tenant_id]

    def codes(self) -> dict[str, dict[str, int]]:
        by_rpc: dict[str, Counter[str]] = {}
        for entry in self.entries:
            by_rpc.setdefault(entry.rpc, Counter())[entry.code] += 1
        return {rpc: dict(sorted(counts.items())) for rpc, counts in sorted(by_rpc.items())}

    def describe(self, violation: Violation, seed: int) -> str:
        lines = [f"VIOLATION {violation.invariant} (seed {seed}): {violation.message}"]
        for seq in violation.entries:
            lines.append(f"  ledger[{seq}] {asdict(self.entries[seq])}")
        return "\n".join(lines)
