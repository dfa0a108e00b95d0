"""Development tooling: the all-in-one local stack on embedded servers.

Never installed in the service images: production code must not import it.
Tests and the benchmark use it to start embedded PostgreSQL and the Temporal
dev server the same way `tenantry-dev` does.
"""

import os

# tenantry-dev forks the services and pg_ctl after gRPC has started threads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
