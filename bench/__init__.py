"""Benchmarks of Tenantry against its floors (`make bench`, `python -m bench`).

Timing goals live here, never in `make test`; a tiny smoke mode
(`python -m bench --smoke`) checks that the benchmark itself runs.
"""

import os

# The benchmark forks helpers (pg_ctl, the services) after gRPC has started
# threads; gRPC's fork handlers would only log that they are skipped.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
