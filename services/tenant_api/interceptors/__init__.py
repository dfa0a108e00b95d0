"""The API's server interceptors, one module each:

- `tracing`: a span per call, only while the process traces (OTEL_* set).
- `access_log`: one log line and one metric sample per call, with its final
  status; holds the per-method handler table (each method's chain is built once).
- `admission`: a cap on calls in flight (RESOURCE_EXHAUSTED TOO_MANY_REQUESTS);
  health checks are exempt.
- `error_mapping`: every failure leaves as a deliberate status with ErrorInfo.
- `authentication`: who is calling (bearer token, the method's permission, a
  tenant-bound token's tenant).
- `tenant_gate`: admits a tenant-scoped call for an ACTIVE tenant, in the
  call's transaction (the gate's domain logic is `tenant_api.tenant_gate`).

`handlers` is their shared plumbing. The order they run in, and why, is
explained once, where the chain is assembled: `tenant_api.server`.
"""
