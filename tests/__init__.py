"""Tests against real PostgreSQL and a real Temporal server."""

import os

# The tests fork tenant-api, workers and pg_ctl while gRPC runs threads in this
# process; gRPC's fork handlers then run half-way in the child (seen as an
# epoll "Bad file descriptor" in a worker that never started). Off before any
# import of grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
