"""The benchmark itself works: `python -m bench --smoke` starts its own stack,
runs every scenario with its floors, writes the JSON and Markdown reports, and
leaves no process behind. No timing is asserted here (goals are reported by
`make bench`, never checked by `make test`); matplotlib is optional, so the
chart is checked only where it is installed."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tests.stack import REPO_ROOT

SMOKE_TIMEOUT_SECONDS = 120
SCENARIOS = (
    "register",
    "event_write",
    "reads",
    "event_delivery",
    "provisioning",
    "lifecycle",
    "deletion",
    "growth",
    "fleet",
    "rss",
)
# Goals whose measurement is a count that must be zero, not a positive number.
ZERO_GOALS = {"event_delivery_missing"}


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _no_errors(summary: dict[str, Any]) -> None:
    assert summary.get("errors", 0) == 0, summary.get("error_samples")
    assert _positive(summary["p50_ms"]) and _positive(summary["p99_ms"]), summary


def test_smoke_run_reports_every_scenario_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"

    results = json.loads((out / "latest.json").read_text())
    scenarios = results["scenarios"]
    assert set(SCENARIOS) <= set(scenarios)

    for level in scenarios["register"]["levels"]:
        for summary in (level["register"], level["register_worker_busy"], *level["floors"].values()):
            _no_errors(summary)
        assert level["workflow_start_failed"] == 0
        assert set(level["tenant_states_after"]) == {"ACTIVE"}
        assert _positive(level["ratio_p50_vs_db_plus_engine"])

    assert set(scenarios["reads"]["rpcs_shard_b"]) == set(scenarios["reads"]["rpcs"])
    for rows in (*scenarios["reads"]["rpcs"].values(), *scenarios["reads"]["rpcs_shard_b"].values()):
        for row in rows:
            _no_errors(row["with_gate"])
            _no_errors(row["without_interceptors"])
            assert _positive(row["ratio_p50"])

    event_write = scenarios["event_write"]
    assert [row["concurrency"] for row in event_write["levels"]] == results["meta"]["config"]["event_write_concurrency"]
    for row in event_write["levels"]:
        _no_errors(row["with_event"])
        _no_errors(row["without_event"])
        assert _positive(row["ratio_p50"])
    # Every statement-level registration was cleaned up or closed: none is left CREATING.
    assert event_write["cleanup"]["closed_with_event"] > 0 and event_write["cleanup"]["removed_without_event"] > 0

    delivery = scenarios["event_delivery"]
    assert delivery["registrations"] == results["meta"]["config"]["event_registrations"]
    assert delivery["register_errors"] == 0 and delivery["watch_errors"] == []
    assert delivery["deliveries"] == delivery["deliveries_expected"] == delivery["watchers"] * delivery["registrations"]
    assert delivery["missing"] == delivery["duplicates"] == delivery["out_of_order"] == 0
    assert _positive(delivery["commit_to_watcher"]["p50_ms"]) and _positive(delivery["commit_to_watcher"]["p99_ms"])

    provisioning = scenarios["provisioning"]
    tenantry = provisioning["tenantry"]
    assert tenantry["active"] == tenantry["count"] > 0 and tenantry["errors"] == 0
    assert tenantry["tenant_states_after"] == {"ACTIVE": tenantry["count"]}
    assert _positive(tenantry["tenants_per_s"]) and _positive(tenantry["register_to_active"]["p50_ms"])
    assert _positive(provisioning["floors"]["db_ddl"]["tenants_per_s"])
    assert _positive(provisioning["floors"]["engine"]["tenants_per_s"])
    assert _positive(provisioning["ratio_throughput_vs_lower_floor"])

    lifecycle = scenarios["lifecycle"]
    assert set(lifecycle["steps"]) == {"suspend", "resume", "delete", "undelete"}
    for step, row in lifecycle["steps"].items():
        assert row["rpc"]["count"] == lifecycle["cycles"] > 0, (step, row)
        _no_errors(row["rpc"])
        assert row["rpc"]["response_wrong_state"] == 0, (step, row)
        assert _positive(row["rpc"]["p95_ms"])
    for step in ("suspend", "resume"):
        floor = lifecycle["steps"][step]["floor"]
        assert floor["count"] == lifecycle["cycles"]
        _no_errors(floor)
        assert _positive(lifecycle["steps"][step]["ratio_p50"])
    # Every cycle ends where it began: the tenants and the floor's tenants are ACTIVE again.
    assert lifecycle["tenant_states_after"] == {"ACTIVE": lifecycle["tenants"]}
    assert lifecycle["floor_tenant_states_after"] == {"ACTIVE": lifecycle["tenants"]}

    for part in (scenarios["deletion"]["sequential"], scenarios["deletion"]["bulk"]):
        assert part["count"] > 0
        assert part["tenant_states_after"] == {"DELETED": part["count"]}
        assert part["schemas_left"] == 0
    assert _positive(scenarios["deletion"]["sequential"]["delete_to_deleted"]["p50_ms"])

    levels = scenarios["growth"]["levels"]
    assert [level["target"] for level in levels] == list(results["meta"]["config"]["growth_levels"])
    assert levels[0]["existing_active_tenants"] == 0
    assert levels[-1]["existing_active_tenants"] >= levels[-1]["target"]
    for level in levels:
        assert level["provisioning"]["errors"] == 0
        assert level["provisioning"]["tenant_states_after"] == {"ACTIVE": level["provisioning"]["batch"]}
        assert _positive(level["provisioning"]["tenants_per_s"])
        _no_errors(level["read"])

    fleet = scenarios["fleet"]
    config = results["meta"]["config"]
    for count, rollout in (
        (config["fleet_tenants"], fleet["rollout"]),
        (config["fleet_large_tenants"], fleet["large"]["rollout"]),
    ):
        # Through the real path: one MIGRATE operation SUCCEEDED, every tenant at head, one event each.
        assert rollout["operation_state"] == "SUCCEEDED", rollout
        assert rollout["progress"] == {"total": count, "succeeded": count, "failed": 0}, rollout
        assert rollout["tenants_at_head"] == rollout["schema_migrated_events"] == count > 0, rollout
        assert _positive(rollout["seconds"]) and _positive(rollout["tenants_per_s"])
    assert fleet["from_revision"] != fleet["to_revision"]
    assert _positive(fleet["floor"]["tenants_per_s"]) and _positive(fleet["ratio_tenants_per_s"])
    assert fleet["rerun"]["live_tenants"] >= config["fleet_tenants"] + config["fleet_large_tenants"]
    assert _positive(fleet["rerun"]["seconds"]) and "nothing to do" in fleet["rerun"]["output"]

    peaks = scenarios["rss"]["peak_mib"]
    assert _positive(peaks["tenant-api"]) and _positive(peaks["provisioner-worker"])

    goals = results["goals"]
    assert {g["id"] for g in goals} >= {
        "register_p50_c1",
        "provisioning_throughput",
        "growth_cost",
        "api_peak_rss",
        "worker_peak_rss",
        "event_delivery_p99",
        "fleet_rollout_ratio",
        "fleet_rollout_5000_s",
        "fleet_rerun_s",
        *ZERO_GOALS,
    }
    for goal in goals:
        if goal["id"] in ZERO_GOALS:
            assert goal["measured"] == 0 and goal["met"] is True, goal
        else:
            assert _positive(goal["measured"]), goal
        assert isinstance(goal["met"], bool)

    # Nothing the benchmark started is still running.
    assert results["meta"]["processes_left_running"] == []
    for name, pid in results["meta"]["processes"].items():
        if psutil.pid_exists(pid):
            status = psutil.Process(pid).status()
            assert status == psutil.STATUS_ZOMBIE, f"{name} ({pid}) still {status}"

    markdown = (out / "latest.md").read_text()
    for heading in (
        "## Goals",
        "## 1.",
        "## 2.",
        "## 3.",
        "## 4.",
        "## 5.",
        "## 6.",
        "## 7.",
        "## 8.",
        "## 9.",
        "## 10.",
    ):
        assert heading in markdown
    for row in ("| SuspendTenant", "| ResumeTenant", "| UndeleteTenant", "| tenantry-migrate tenants", "| rerun"):
        assert row in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) > len(goals)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))
