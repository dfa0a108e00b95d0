"""Writing the tenant event log: one statement, in the transaction of the change.

Sequence numbers come from the one-row `tenant_event_counter`: taking the next
number locks that row until the transaction ends, so a transaction that takes
a number waits for the previous taker to commit or roll back. Numbers therefore
become visible strictly in order and without gaps (a rolled-back number is
handed out again), which is what lets a watcher resume "after N" safely.
The lock is held from the event write to the commit: write the event as the
last statement of its transaction, after every other lock it takes, so the
counter is held only for the commit itself and lock order stays acyclic.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import BigInteger, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tenantry.db.models import Operation, TenantEvent, TenantEventCounter
from tenantry.states import TenantEventType, TenantState

EVENT_CHANNEL = "tenantry_tenant_event"
# The actor of a worker change whose operation records none (rows from before actors).
SYSTEM_WORKER = "system:provisioner-worker"

_EVENTS = TenantEvent.__tablename__
_COUNTER = TenantEventCounter.__tablename__
_COLUMNS = "sequence, tenant_id, type, state, actor, operation, request_id"


@dataclass(frozen=True)
class EventRecord:
    tenant_id: uuid.UUID
    type: TenantEventType
    state: TenantState
    actor: str
    operation: str = ""
    request_id: uuid.UUID | None = None

    def params(self) -> dict[str, object]:
        return {
            "event_tenant_id": self.tenant_id,
            "event_type": self.type.value,
            "event_state": self.state.value,
            "event_actor": self.actor,
            "event_operation": self.operation,
            "event_request_id": self.request_id,
        }


def event_ctes(
    *,
    after: str,
    tenant_id: str,
    type: TenantEventType,
    state: TenantState,
    actor: str,
    operation: str,
    request_id: str = "NULL",
) -> str:
    """CTEs (`event_sequence`, `event`) that append one event inside a larger
    data-modifying statement; the other arguments are SQL expressions.

    `after` names a CTE of that statement: the counter is taken only once it has
    produced its rows (the uncorrelated EXISTS is evaluated before the counter
    row is locked, and no row means no event), so the counter is the last lock
    the statement takes."""
    return f"""
    event_sequence AS (
        UPDATE {_COUNTER} SET last_sequence = last_sequence + 1
        WHERE EXISTS (SELECT 1 FROM {after})
        RETURNING last_sequence
    ), event AS (
        INSERT INTO {_EVENTS} ({_COLUMNS})
        SELECT last_sequence, {tenant_id}, '{type.value}', '{state.value}', {actor}, {operation}, {request_id}
        FROM event_sequence
        RETURNING sequence
    )"""


def operation_actor(workflow_id: str) -> str:
    """SQL: the actor recorded on an operation, for the changes its workflow makes."""
    return f"(SELECT actor FROM {Operation.__tablename__} WHERE workflow_id = {workflow_id})"


_APPEND = text(
    f"""
    WITH event_sequence AS (
        UPDATE {_COUNTER} SET last_sequence = last_sequence + 1 RETURNING last_sequence
    )
    INSERT INTO {_EVENTS} ({_COLUMNS})
    SELECT last_sequence, CAST(:event_tenant_id AS uuid), :event_type, :event_state, :event_actor,
           :event_operation, CAST(:event_request_id AS uuid)
    FROM event_sequence
    RETURNING sequence
    """
).columns(sequence=BigInteger)

LAST_SEQUENCE = text(f"SELECT last_sequence FROM {_COUNTER}").columns(last_sequence=BigInteger)


async def append_event(db: AsyncSession | AsyncConnection, event: EventRecord) -> int:
    """Appends `event` in `db`'s current transaction; returns its sequence."""
    result = await db.execute(_APPEND, event.params())
    return int(result.scalar_one())
