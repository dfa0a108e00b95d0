"""The chaos soak (`make soak`, `python -m soak`): the embedded stack as separate
processes (two APIs, two workers, PostgreSQL, Temporal), concurrent gRPC
clients whose acknowledged responses go into a ledger, a seeded schedule of
faults, a settle phase and the invariants checked against the ledger."""

import os

# The soak forks the services and pg_ctl after gRPC has started threads; gRPC's
# fork handlers would only log that they are skipped. Off before any import of grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
