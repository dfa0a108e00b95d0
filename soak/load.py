"""The load: concurrent gRPC clients doing what real callers do, each on the
tenants it registered (so every tenant's history in the ledger is one line of
acknowledged calls), and event watchers that disconnect and resume from their
last sequence. A call whose outcome is unknown (UNAVAILABLE, a deadline) is
repeated with the same request_id until it has a definite answer: that is what
request ids are for, and the run checks they hold under faults."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from soak.ledger import Entry, Ledger
from tenantry.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from tenantry_dev.tokens import channel_with_token

CALL_TIMEOUT = 10.0
# The outcome is unknown: repeat (same request_id), on the other API.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# A client that still has no definite answer this long after the load stopped gives up.
GIVE_UP_AFTER_STOP = 120.0
# gRPC's reconnect backoff otherwise grows to two minutes while an API is down.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 300),
    ("grpc.min_reconnect_backoff_ms", 300),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
# What each acknowledged mutating call must have written to the event feed.
EVENT_OF = {
    "RegisterTenant": "REGISTERED",
    "UpdateTenant": "UPDATED",
    "SuspendTenant": "SUSPENDED",
    "ResumeTenant": "RESUMED",
    "DeleteTenant": "DELETED",
    "UndeleteTenant": "UNDELETED",
    "RetryTenantProvisioning": "PROVISIONING_RETRIED",
}
# States a tenant may be seen in, given the state its last acknowledged call left
# it in: only the system's own transitions (provisioning, the purge) may follow.
MAY_BECOME = {
    "CREATING": {"CREATING", "ACTIVE", "FAILED"},
    "ACTIVE": {"ACTIVE"},
    "SUSPENDED": {"SUSPENDED"},
    "FAILED": {"FAILED"},
    "DELETING": {"DELETING", "DELETED"},
    "DELETED": {"DELETED"},
}


def state_name(state: int) -> str:
    return tenant_pb2.TenantState.Name(state).removeprefix("TENANT_STATE_")


def reason_of(error: grpc.aio.AioRpcError) -> str:
    with contextlib.suppress(Exception):
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return ""


@dataclass
class Endpoint:
    address: str
    channel: grpc.aio.Channel
    tenants: tenant_service_pb2_grpc.TenantServiceAsyncStub
    projects: project_service_pb2_grpc.ProjectServiceAsyncStub
    events: event_service_pb2_grpc.TenantEventServiceAsyncStub


class Apis:
    """One channel per API; a caller moves to the next one after a failure."""

    def __init__(self, addresses: list[str], token: str) -> None:
        self.endpoints = []
        for address in addresses:
            channel = channel_with_token(address, token, options=CHANNEL_OPTIONS)
            self.endpoints.append(
                Endpoint(
                    address,
                    channel,
                    tenant_service_pb2_grpc.TenantServiceStub(channel),
                    project_service_pb2_grpc.ProjectServiceStub(channel),
                    event_service_pb2_grpc.TenantEventServiceStub(channel),
                )
            )

    def get(self, index: int) -> Endpoint:
        return self.endpoints[index % len(self.endpoints)]

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.channel.close(None)


@dataclass
class Outcome:
    entry: Entry
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.entry.code == "OK"

    @property
    def resolved(self) -> bool:
        return self.entry.code != "GAVE_UP"


@dataclass
class Owned:
    """A tenant as its client knows it from acknowledged answers."""

    tenant_id: str
    registration: tenant_service_pb2.RegisterTenantRequest
    state: str
    etag: str
    stale_etags: list[str] = field(default_factory=list)
    projects: dict[str, int] = field(default_factory=dict)  # project id -> ledger entry
    # A call on it never got a definite answer: its state is no longer known.
    uncertain: bool = False


@dataclass
class Run:
    """What the load's tasks share."""

    ledger: Ledger
    apis: Apis
    seed: int
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_at: float | None = None
    tenants: dict[str, Owned] = field(default_factory=dict)
    # Registrations that never got a definite answer: their request ids.
    unresolved_registrations: list[str] = field(default_factory=list)
    unresolved_request_ids: set[str] = field(default_factory=set)

    def give_up(self) -> bool:
        return self.stopped_at is not None and self.ledger.now() - self.stopped_at > GIVE_UP_AFTER_STOP


class Client:
    def __init__(self, run: Run, index: int, rate: float, cap: int) -> None:
        self.run = run
        self.name = f"client-{index}"
        self.rng = random.Random(f"{run.seed}-{self.name}")
        self.api = index
        self.rate = rate
        self.cap = cap
        self.mine: list[Owned] = []

    # -- calls ----------------------------------------------------------------

    async def call(
        self,
        rpc: str,
        invoke: Callable[[Endpoint], Awaitable[Any]],
        *,
        tenant_id: str = "",
        request_id: str = "",
        repeatable: bool = True,
        describe: Callable[[Any], dict[str, Any]] = lambda _: {},
    ) -> Outcome:
        """One logical call; repeated while its outcome is unknown if it is
        `repeatable` (a read, or a write with a request_id)."""
        ledger = self.run.ledger
        delay = 0.2
        attempts = 0
        while True:
            attempts += 1
            endpoint = self.run.apis.get(self.api)
            try:
                response = await invoke(endpoint)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                entry = ledger.record(
                    self.name, rpc, code.name, reason=reason_of(error), tenant_id=tenant_id, request_id=request_id
                )
                if code not in TRANSIENT:
                    return Outcome(entry)
                if not repeatable:
                    entry.detail["unknown_outcome"] = True
                    return Outcome(entry)
                self.api += 1
                if self.run.give_up():
                    gave_up = ledger.record(self.name, rpc, "GAVE_UP", tenant_id=tenant_id, request_id=request_id)
                    if request_id:
                        self.run.unresolved_request_ids.add(request_id)
                    return Outcome(gave_up)
                await asyncio.sleep(delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, 3.0)
                continue
            entry = ledger.record(self.name, rpc, "OK", tenant_id=tenant_id, request_id=request_id)
            entry.detail.update(describe(response))
            if attempts > 1:
                entry.detail["attempts"] = attempts
            return Outcome(entry, response)

    # -- the loop -------------------------------------------------------------

    async def loop(self) -> None:
        while not self.run.stopping.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.run.stopping.wait(), self.rng.expovariate(self.rate))

    def live(self) -> list[Owned]:
        return [t for t in self.mine if not t.uncertain and t.state != "DELETED"]

    async def step(self) -> None:
        live = self.live()
        if len(live) < self.cap and (not live or self.rng.random() < 0.25):
            await self.register()
            return
        tenant = self.rng.choice(live)
        if not await self.refresh(tenant):
            return
        choice = self.rng.random()
        state = tenant.state
        if state == "ACTIVE":
            if choice < 0.30:
                await self.create_project(tenant)
            elif choice < 0.50:
                await self.read_projects(tenant)
            elif choice < 0.62:
                await self.update(tenant)
            elif choice < 0.68:
                await self.update_with_stale_etag(tenant)
            elif choice < 0.78:
                await self.suspend(tenant)
            elif choice < 0.88:
                await self.delete(tenant)
            else:
                await self.repeat_registration(tenant)
        elif state == "SUSPENDED":
            if choice < 0.6:
                await self.resume(tenant)
            elif choice < 0.8:
                await self.delete(tenant)
            else:
                await self.update(tenant)
        elif state == "DELETING":
            if choice < 0.5:
                await self.undelete(tenant)
            elif choice < 0.8:
                await self.purge(tenant)
            # else: let the retention run out
        elif state == "FAILED":
            if choice < 0.5:
                await self.retry_provisioning(tenant)
            else:
                await self.delete(tenant)
        elif state == "CREATING" and choice < 0.1:
            await self.delete(tenant)

    # -- tenants --------------------------------------------------------------

    def acknowledged(self, tenant: Owned, outcome: Outcome, response_tenant: tenant_pb2.Tenant) -> None:
        if tenant.etag and tenant.etag != response_tenant.etag:
            tenant.stale_etags.append(tenant.etag)
        tenant.etag = response_tenant.etag
        tenant.state = state_name(response_tenant.state)
        outcome.entry.detail.update(state=tenant.state, etag=tenant.etag)

    def unknown(self, tenant: Owned, outcome: Outcome) -> bool:
        if not outcome.resolved:
            tenant.uncertain = True
        return not outcome.resolved

    async def register(self) -> None:
        request_id = str(uuid.uuid4())
        slug = f"s-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
        request = tenant_service_pb2.RegisterTenantRequest(
            slug=slug,
            display_name=f"Soak {slug}",
            admin_email=f"admin@{slug}.example.com",
            admin_display_name="Soak Admin",
            request_id=request_id,
            labels={"soak": "yes"},
        )
        outcome = await self.call(
            "RegisterTenant",
            lambda e: e.tenants.RegisterTenant(request, timeout=CALL_TIMEOUT),
            request_id=request_id,
            describe=lambda r: {"slug": slug},
        )
        if not outcome.resolved:
            self.run.unresolved_registrations.append(request_id)
            return
        if not outcome.ok:
            return
        response = outcome.response
        tenant = Owned(response.tenant.id, request, "", "")
        outcome.entry.tenant_id = tenant.tenant_id
        self.acknowledged(tenant, outcome, response.tenant)
        # A repeat of a registration that had committed may answer the tenant as it is now.
        self.run.ledger.check(
            "register_answers_creating",
            tenant.state == "CREATING" or "attempts" in outcome.entry.detail,
            f"RegisterTenant answered {tenant.state}",
            [outcome.entry],
        )
        self.mine.append(tenant)
        self.run.tenants[tenant.tenant_id] = tenant

    async def repeat_registration(self, tenant: Owned) -> None:
        """The same request with the same request_id: the same tenant, no second one."""
        request = tenant.registration
        outcome = await self.call(
            "RegisterTenant",
            lambda e: e.tenants.RegisterTenant(request, timeout=CALL_TIMEOUT),
            tenant_id=tenant.tenant_id,
            request_id=request.request_id,
            describe=lambda r: {"repeat": True, "answered_tenant": r.tenant.id},
        )
        if outcome.ok:
            first = next(e for e in self.run.ledger.for_tenant(tenant.tenant_id) if e.rpc == "RegisterTenant")
            self.run.ledger.check(
                "request_id_replay",
                outcome.response.tenant.id == tenant.tenant_id,
                f"a repeated registration answered tenant {outcome.response.tenant.id}, not {tenant.tenant_id}",
                [first, outcome.entry],
            )

    async def refresh(self, tenant: Owned) -> bool:
        """GetTenant, checked against what the ledger allows; false if unusable."""
        request = tenant_service_pb2.GetTenantRequest(tenant_id=tenant.tenant_id)
        outcome = await self.call(
            "GetTenant",
            lambda e: e.tenants.GetTenant(request, timeout=CALL_TIMEOUT),
            tenant_id=tenant.tenant_id,
            describe=lambda r: {"state": state_name(r.tenant.state)},
        )
        if not outcome.ok:
            return False
        seen = state_name(outcome.response.tenant.state)
        allowed = MAY_BECOME.get(tenant.state, set())
        if tenant.state:
            last = [e for e in self.run.ledger.for_tenant(tenant.tenant_id) if e.acknowledged and e.rpc != "GetTenant"]
            self.run.ledger.check(
                "state_allowed_by_ledger",
                seen in allowed,
                f"tenant {tenant.tenant_id} seen {seen}; its acknowledged calls allow {sorted(allowed)}",
                [*last[-3:], outcome.entry],
            )
        if tenant.etag != outcome.response.tenant.etag and tenant.etag:
            tenant.stale_etags.append(tenant.etag)
        tenant.etag = outcome.response.tenant.etag
        tenant.state = seen
        return True

    async def _change(self, rpc: str, tenant: Owned, request: Any, method: str) -> Outcome:
        outcome = await self.call(
            rpc,
            lambda e: getattr(e.tenants, method)(request, timeout=CALL_TIMEOUT),
            tenant_id=tenant.tenant_id,
            request_id=request.request_id,
            describe=lambda r: {"expect_event": EVENT_OF.get(rpc, "")},
        )
        if self.unknown(tenant, outcome) or not outcome.ok:
            return outcome
        self.acknowledged(tenant, outcome, outcome.response.tenant)
        return outcome

    async def update(self, tenant: Owned) -> None:
        request = tenant_service_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=tenant.tenant_id, display_name=f"Soak {self.rng.getrandbits(32):08x}", etag=tenant.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            request_id=str(uuid.uuid4()),
        )
        await self._change("UpdateTenant", tenant, request, "UpdateTenant")

    async def update_with_stale_etag(self, tenant: Owned) -> None:
        """An etag from before an acknowledged change is refused (ABORTED)."""
        if not tenant.stale_etags:
            return
        stale = self.rng.choice(tenant.stale_etags)
        request = tenant_service_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(id=tenant.tenant_id, display_name="Stale", etag=stale),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            request_id=str(uuid.uuid4()),
        )
        outcome = await self._change("UpdateTenant", tenant, request, "UpdateTenant")
        if outcome.resolved:
            self.run.ledger.check(
                "stale_etag_refused",
                outcome.entry.code == "ABORTED",
                f"UpdateTenant with a stale etag answered {outcome.entry.code}",
                [outcome.entry],
            )

    async def suspend(self, tenant: Owned) -> None:
        request = tenant_service_pb2.SuspendTenantRequest(
            tenant_id=tenant.tenant_id, reason="soak", etag=tenant.etag, request_id=str(uuid.uuid4())
        )
        await self._change("SuspendTenant", tenant, request, "SuspendTenant")

    async def resume(self, tenant: Owned) -> None:
        request = tenant_service_pb2.ResumeTenantRequest(
            tenant_id=tenant.tenant_id, etag=tenant.etag, request_id=str(uuid.uuid4())
        )
        await self._change("ResumeTenant", tenant, request, "ResumeTenant")

    async def delete(self, tenant: Owned) -> None:
        etag = tenant.etag if self.rng.random() < 0.5 else ""
        request = tenant_service_pb2.DeleteTenantRequest(
            tenant_id=tenant.tenant_id, etag=etag, request_id=str(uuid.uuid4())
        )
        await self._change("DeleteTenant", tenant, request, "DeleteTenant")

    async def undelete(self, tenant: Owned) -> None:
        request = tenant_service_pb2.UndeleteTenantRequest(tenant_id=tenant.tenant_id, request_id=str(uuid.uuid4()))
        await self._change("UndeleteTenant", tenant, request, "UndeleteTenant")

    async def purge(self, tenant: Owned) -> None:
        request = tenant_service_pb2.PurgeTenantRequest(tenant_id=tenant.tenant_id, request_id=str(uuid.uuid4()))
        outcome = await self._change("PurgeTenant", tenant, request, "PurgeTenant")
        if outcome.ok:
            outcome.entry.detail["purge_acknowledged"] = True

    async def retry_provisioning(self, tenant: Owned) -> None:
        request = tenant_service_pb2.RetryTenantProvisioningRequest(
            tenant_id=tenant.tenant_id, etag=tenant.etag, request_id=str(uuid.uuid4())
        )
        await self._change("RetryTenantProvisioning", tenant, request, "RetryTenantProvisioning")

    # -- projects -------------------------------------------------------------

    async def create_project(self, tenant: Owned) -> None:
        name = f"p-{self.rng.getrandbits(64):016x}"
        request = project_service_pb2.CreateProjectRequest(name=name, description="soak")
        metadata = (("x-tenant-id", tenant.tenant_id),)
        # No request_id on CreateProject: an unknown outcome is not repeated (it
        # may or may not exist; only acknowledged writes are checked).
        outcome = await self.call(
            "CreateProject",
            lambda e: e.projects.CreateProject(request, timeout=CALL_TIMEOUT, metadata=metadata),
            tenant_id=tenant.tenant_id,
            repeatable=False,
            describe=lambda r: {"project_id": r.project.id, "name": name},
        )
        if outcome.ok:
            tenant.projects[outcome.response.project.id] = outcome.entry.seq

    async def read_projects(self, tenant: Owned) -> None:
        """Every acknowledged project of an ACTIVE tenant reads back, one by id and all in the list."""
        metadata = (("x-tenant-id", tenant.tenant_id),)
        ledger = self.run.ledger
        if tenant.projects and self.rng.random() < 0.5:
            project_id = self.rng.choice(sorted(tenant.projects))
            request = project_service_pb2.GetProjectRequest(project_id=project_id)
            outcome = await self.call(
                "GetProject",
                lambda e: e.projects.GetProject(request, timeout=CALL_TIMEOUT, metadata=metadata),
                tenant_id=tenant.tenant_id,
            )
            if outcome.resolved:
                ledger.check(
                    "acknowledged_write_readable",
                    outcome.ok,
                    f"project {project_id} of ACTIVE tenant {tenant.tenant_id}: {outcome.entry.code}",
                    [ledger.entries[tenant.projects[project_id]], outcome.entry],
                )
            return
        listing = project_service_pb2.ListProjectsRequest(page_size=500)
        outcome = await self.call(
            "ListProjects",
            lambda e: e.projects.ListProjects(listing, timeout=CALL_TIMEOUT, metadata=metadata),
            tenant_id=tenant.tenant_id,
        )
        if outcome.ok:
            listed = {p.id for p in outcome.response.projects}
            missing = [seq for pid, seq in tenant.projects.items() if pid not in listed]
            ledger.check(
                "acknowledged_write_readable",
                not missing,
                f"{len(missing)} acknowledged projects missing from ListProjects of {tenant.tenant_id}",
                [*(ledger.entries[s] for s in missing), outcome.entry],
            )


class Watcher:
    """WatchTenantEvents over the whole feed from the start; disconnects at
    random (and whenever an API dies) and resumes after its last sequence."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.name = f"watcher-{index}"
        self.rng = random.Random(f"{run.seed}-{self.name}")
        self.api = index
        self.seen: list[int] = []
        self.disconnects = 0
        self.resumes = 0
        # Set once the final feed is known: the watcher stops after reaching it.
        self.target: int | None = None
        self.done = asyncio.Event()
        self._stream: Any = None
        self._cancelled_here = False

    @property
    def last(self) -> int:
        return self.seen[-1] if self.seen else 0

    def finish(self, target: int) -> None:
        """Read up to `target` (the feed's last sequence), then stop."""
        self.target = target
        if self._stream is not None:
            # Idle in a live stream: wake it; the loop resumes if events are missing.
            self._cancelled_here = True
            self._stream.cancel()

    async def loop(self) -> None:
        ledger = self.run.ledger
        while self.target is None or self.last < self.target:
            endpoint = self.run.apis.get(self.api)
            request = event_service_pb2.WatchTenantEventsRequest(after_sequence=self.last)
            # Leave after a random number of events, as a client that goes away.
            budget = self.rng.randint(5, 150)
            stream = endpoint.events.WatchTenantEvents(request)
            self._stream, self._cancelled_here = stream, False
            self.resumes += 1
            try:
                async for response in stream:
                    self.seen.append(response.event.sequence)
                    budget -= 1
                    if budget <= 0 or (self.target is not None and self.last >= self.target):
                        break
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED or not self._cancelled_here:
                    ledger.record(self.name, "WatchTenantEvents", error.code().name, reason=reason_of(error))
                    self.api += 1
                    await asyncio.sleep(0.3 + self.rng.random())
            except asyncio.CancelledError:
                if not self._cancelled_here:
                    raise
            finally:
                self._stream = None
                stream.cancel()
            self.disconnects += 1
        self.done.set()
