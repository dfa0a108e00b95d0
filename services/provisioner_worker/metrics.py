"""The worker's own Prometheus metrics (Temporal SDK metrics are served by the
SDK runtime on a separate endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

PROVISIONING_SECONDS = Histogram(
    "tenantry_provisioning_duration_seconds",
    "Registration to ACTIVE (or FAILED), by outcome",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
)
DELETION_SECONDS = Histogram(
    "tenantry_deletion_duration_seconds",
    "Soft delete to DELETED",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
)
RECONCILER_FINDINGS = Counter(
    "tenantry_reconciler_findings_total",
    "What reconciliation runs found and did, by kind",
    ["kind"],
)
TENANT_SCHEMAS = Gauge(
    "tenantry_tenant_schemas",
    "Tenant schemas by condition and shard, as the last reconciliation saw them: live tenants (ACTIVE or "
    "SUSPENDED) behind_head (below the tenant lineage's head revision) or missing (no schema on their shard), "
    "and orphan schemas (on the shard's database, no live tenant placed there)",
    ["condition", "shard"],
)
MOVE_SWITCH_SECONDS = Histogram(
    "tenantry_move_switch_seconds",
    "A tenant move's TENANT_MOVING window: moving = true committed to the placement switched",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
