"""The chaos soak, short: about a minute of load on the embedded stack (two
APIs, two workers, PostgreSQL and Temporal as separate processes) with a fixed
seed and a reduced fault mix that still kills a worker and an API and restarts
PostgreSQL; every invariant `make soak` checks must hold, with zero violations.
The long run is `make soak`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.stack import REPO_ROOT

pytestmark = pytest.mark.slow

SHORT_FAULTS = "worker_kill,api_kill,postgres_restart"
# Stack start, a minute of load, the settle and the checks, on a busy machine.
TIMEOUT_SECONDS = 420
# Every invariant family the short run must have exercised at least once.
INVARIANTS = {
    "state_allowed_by_ledger",
    "request_id_replay",
    "stale_etag_refused",
    "acknowledged_write_readable",
    "nothing_stuck_after_settle",
    "no_open_operation",
    "no_live_tenant_without_schema",
    "final_state_allowed_by_ledger",
    "every_tenant_in_ledger",
    "feed_in_order",
    "one_event_per_acknowledged_change",
    "events_in_acknowledgment_order",
    "feed_ends_in_tenant_state",
    "purged_once",
    "watcher_saw_each_event_once",
}


def test_short_soak_has_zero_violations(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "soak",
            "--duration",
            "60",
            "--warmup",
            "8",
            "--seed",
            "1717",
            "--clients",
            "6",
            "--rate",
            "15",
            "--faults",
            SHORT_FAULTS,
            "--required-faults",
            SHORT_FAULTS,
            "--faults-per-minute",
            "3",
            "--settle-timeout",
            "180",
            "--output",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    report = out / "latest.json"
    assert report.exists(), f"no report; stderr:\n{run.stderr[-4000:]}"
    results = json.loads(report.read_text())
    # A violation's seed and ledger entries are on stderr.
    assert results["violations"] == [], run.stderr[-6000:]
    assert run.returncode == 0, run.stderr[-4000:]

    injected = results["faults_injected"]
    assert {name: injected.get(name, 0) >= 1 for name in SHORT_FAULTS.split(",")} == dict.fromkeys(
        SHORT_FAULTS.split(","), True
    ), injected
    assert results["settle"]["settled"] is True, results["settle"]
    checked = results["invariants_checked"]
    assert {name for name in INVARIANTS if checked.get(name, 0) == 0} == set(), checked
    codes = {code for counts in results["calls_by_rpc_and_code"].values() for code in counts}
    assert not codes & {"INTERNAL", "UNKNOWN"}, results["calls_by_rpc_and_code"]
    # The load did real work across the lifecycle, and the faults were felt.
    by_rpc = results["calls_by_rpc_and_code"]
    for rpc in ("RegisterTenant", "DeleteTenant", "UndeleteTenant", "PurgeTenant", "SuspendTenant", "CreateProject"):
        assert by_rpc.get(rpc, {}).get("OK", 0) > 0, (rpc, by_rpc.get(rpc))
    assert results["tenant_states"].get("DELETED", 0) > 0 and results["tenant_states"].get("ACTIVE", 0) > 0
    assert all(w["events"] == results["events"] and w["resumes"] > 1 for w in results["watchers"]), results["watchers"]

    # Nothing the soak started is still running.
    for line in run.stderr.splitlines():
        assert "did not stop in time" not in line, line
    for pid in results["meta"]["pids"].values():
        if pid and psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
