"""The tenant gate as an interceptor: the call runs inside the admitted
tenant's scope. What admission means lives in `tenant_api.tenant_gate`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import grpc
from sqlalchemy.exc import DBAPIError

from tenant_api.interceptors.handlers import ServerInterceptor, replace_unary
from tenant_api.tenant_gate import TenantGate, current_tenant, is_tenant_scoped

if TYPE_CHECKING:
    from tenant_api.interceptors.handlers import Behavior, Continuation, Handler

log = logging.getLogger(__name__)


class TenantGateInterceptor(ServerInterceptor):
    """Admits a call to a tenant-scoped service only for an ACTIVE tenant, and
    makes that tenant available to the servicer through `current_tenant`."""

    def __init__(self, gate: TenantGate) -> None:
        self._gate = gate

    async def intercept_service(  # type: ignore[override]  # grpc allows None: "no such method"
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not is_tenant_scoped(handler_call_details.method):
            return handler
        if handler.unary_unary is None:
            # Fail closed: a streaming tenant-scoped method is not served
            # (UNIMPLEMENTED) until the gate learns to guard streams.
            log.error("refusing unguarded streaming tenant-scoped method %s", handler_call_details.method)
            return None
        inner = cast("Behavior", handler.unary_unary)
        gate = self._gate

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with gate.admitted(context.invocation_metadata()) as scope:
                token = current_tenant.set(scope)
                try:
                    return await inner(request, context)
                except DBAPIError as exc:
                    explained = await gate.explain_failure(scope, exc)
                    if explained is None:
                        raise
                    raise explained from exc
                finally:
                    current_tenant.reset(token)

        return replace_unary(handler, behavior)
