"""Goals, and the three outputs: latest.json, latest.md and latest.png.

JSON and Markdown need nothing beyond the standard library; matplotlib is
imported only to draw the chart (optional dependency group `bench`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bench.stats import ratio

REGISTER_GOAL = 1.5
READ_GOAL = 1.15
EVENT_WRITE_GOAL = 1.05
EVENT_DELIVERY_P99_GOAL_MS = 100.0
PROVISIONING_GOAL = 0.7
GROWTH_GOAL = 1.3
API_RSS_GOAL_MIB = 150.0
WORKER_RSS_GOAL_MIB = 250.0
# Issue 13: fleet rollout tenants/s vs its floor; 5,000 tenants; a rerun with nothing to apply.
FLEET_RATIO_GOAL = 0.5
FLEET_5000_GOAL_S = 60.0
FLEET_RERUN_GOAL_S = 5.0


def _goal(goal_id: str, description: str, op: str, target: float, measured: float | None) -> dict[str, Any]:
    ok = measured is not None and not math.isnan(measured)
    met = ok and (measured <= target if op == "<=" else measured >= target)  # type: ignore[operator]
    return {
        "id": goal_id,
        "description": description,
        "goal": f"{op} {target:g}",
        "target": target,
        "measured": measured if ok else None,
        "met": bool(met),
    }


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    scenarios = results["scenarios"]
    out = []
    for level in scenarios["register"]["levels"]:
        c = level["concurrency"]
        out.append(
            _goal(
                f"register_p50_c{c}",
                f"RegisterTenant p50 / (db floor p50 + engine floor p50), concurrency {c}",
                "<=",
                REGISTER_GOAL,
                level["ratio_p50_vs_db_plus_engine"],
            )
        )
    read_goals = (
        ("rpcs", "read", "with authentication + gate + access log / bare API"),
        (
            "rpcs_shard_b",
            "read_shard_b",
            "for a tenant on a second shard (b) with authentication + gate + access log / bare API against b",
        ),
    )
    for key, name, what in read_goals:
        for rpc, rows in scenarios["reads"].get(key, {}).items():
            for row in rows:
                c = row["concurrency"]
                # On b: "unchanged with two shards" is the same bound.
                description = f"{rpc} p50 {what}, concurrency {c}"
                out.append(_goal(f"{name}_{rpc}_c{c}", description, "<=", READ_GOAL, row["ratio_p50"]))
    for row in scenarios["event_write"]["levels"]:
        c = row["concurrency"]
        out.append(
            _goal(
                f"event_write_c{c}",
                f"RegisterTenant statement p50 with the event write / without, concurrency {c}",
                "<=",
                EVENT_WRITE_GOAL,
                row["ratio_p50"],
            )
        )
    delivery = scenarios["event_delivery"]
    out.append(
        _goal(
            "event_delivery_p99",
            f"event delivery p99, commit -> watcher (upper bound), ms, {delivery['watchers']} watchers",
            "<=",
            EVENT_DELIVERY_P99_GOAL_MS,
            delivery["commit_to_watcher"].get("p99_ms"),
        )
    )
    out.append(
        _goal(
            "event_delivery_missing",
            f"REGISTERED events missing at a watcher (of {delivery['deliveries_expected']})",
            "<=",
            0,
            delivery["missing"],
        )
    )
    provisioning = scenarios["provisioning"]
    out.append(
        _goal(
            "provisioning_throughput",
            f"{provisioning['tenantry']['count']} at once: tenants/s / lower floor (DDL, engine) tenants/s",
            ">=",
            PROVISIONING_GOAL,
            provisioning["ratio_throughput_vs_lower_floor"],
        )
    )
    levels = scenarios["growth"]["levels"]
    first, last = levels[0], levels[-1]
    out.append(
        _goal(
            "growth_cost",
            f"per-tenant provisioning cost at {last['existing_active_tenants']} tenants / at "
            f"{first['existing_active_tenants']}",
            "<=",
            GROWTH_GOAL,
            ratio(last["provisioning"]["cost_ms_per_tenant"], first["provisioning"]["cost_ms_per_tenant"]),
        )
    )
    out += fleet_goals(scenarios["fleet"])
    peaks = scenarios["rss"]["peak_mib"]
    out.append(_goal("api_peak_rss", "tenant-api peak RSS, MiB", "<=", API_RSS_GOAL_MIB, peaks.get("tenant-api")))
    out.append(
        _goal(
            "worker_peak_rss",
            "provisioner-worker peak RSS, MiB",
            "<=",
            WORKER_RSS_GOAL_MIB,
            peaks.get("provisioner-worker"),
        )
    )
    return out


def _clean(value: Any) -> Any:
    """NaN is not JSON: null instead."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(results: dict[str, Any], directory: Path) -> Path:
    path = directory / "latest.json"
    _write(path, (json.dumps(_clean(results), indent=2, sort_keys=False) + "\n").encode())
    return path


def _ms(summary: dict[str, Any], key: str = "p50_ms") -> str:
    value = summary.get(key)
    return "n/a" if value is None else f"{value:.1f}"


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fleet_goals(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    n = fleet["tenants"]
    goals = [
        _goal(
            "fleet_rollout_ratio",
            f"fleet rollout over {n} tenants: tenants/s / floor (the rendered step, raw asyncpg, same connections)",
            ">=",
            FLEET_RATIO_GOAL,
            fleet["ratio_tenants_per_s"],
        ),
    ]
    if fleet["large"]["tenants"]:
        goals.append(
            _goal(
                "fleet_rollout_5000_s",
                f"fleet rollout of {fleet['large']['tenants']} tenants, s",
                "<=",
                FLEET_5000_GOAL_S,
                fleet["large"]["rollout"]["seconds"],
            )
        )
    goals.append(
        _goal(
            "fleet_rerun_s",
            f"fleet rollout rerun with nothing to apply over {fleet['rerun']['live_tenants']} live tenants, s",
            "<=",
            FLEET_RERUN_GOAL_S,
            fleet["rerun"]["seconds"],
        )
    )
    return goals


def fleet_section(s: dict[str, Any]) -> list[str]:
    f = s["fleet"]
    r = f["rollout"]
    large = f["large"].get("rollout") or {"seconds": None, "tenants_per_s": None}

    def cpu(per_tenant: dict[str, float]) -> str:
        return ", ".join(f"{name} {ms:.2f}" for name, ms in per_tenant.items() if ms >= 0.01)

    return [
        "",
        f"## 10. Fleet rollout: {f['tenants']} tenants {f['from_revision']} → {f['to_revision']}, "
        f"--concurrency {f['concurrency']}",
        "",
        "| | seconds | tenants/s |",
        "|---|---|---|",
        f"| tenantry-migrate tenants (start → MIGRATE done) | {_num(r['seconds'])} | {_num(r['tenants_per_s'], 1)} |",
        f"| floor: the rendered step, raw asyncpg | {_num(f['floor']['seconds'])} "
        f"| {_num(f['floor']['tenants_per_s'], 1)} |",
        f"| tenantry-migrate tenants, {f['large']['tenants']} more tenants | {_num(large['seconds'])} "
        f"| {_num(large['tenants_per_s'], 1)} |",
        f"| rerun, nothing to apply ({f['rerun']['live_tenants']} live tenants) | {_num(f['rerun']['seconds'])} | |",
        "",
        f"Ratio {_num(f['ratio_tenants_per_s'])}; operation {r['operation_state']}, progress {r['progress']}, "
        f"{r['tenants_at_head']} tenants at {f['to_revision']}, {r['schema_migrated_events']} SCHEMA_MIGRATED events. "
        f"CPU ms per tenant, rollout: {cpu(r['cpu_ms_per_tenant'])}; floor: {cpu(f['floor']['cpu_ms_per_tenant'])}.",
        *_fleet_rounds(f),
    ]


def _fleet_rounds(f: dict[str, Any]) -> list[str]:
    rounds = f.get("rounds") or []
    if len(rounds) < 2:
        return []
    return [
        "",
        f"{len(rounds)} rounds on fresh schemas (ratio above: their median): "
        + "; ".join(
            f"{r['rollout_seconds']:.2f} s vs floor {r['floor_seconds']:.2f} s = {r['ratio']:.2f}" for r in rounds
        ),
    ]


def write_fleet_only(results: dict[str, Any], directory: Path) -> list[Path]:
    """`--only fleet`: fleet.json and fleet.md (latest.* are the full run's)."""
    json_path = directory / "fleet.json"
    _write(json_path, json.dumps(_clean(results), indent=2).encode() + b"\n")
    md_path = directory / "fleet.md"
    goal_rows = [
        f"| {g['description']} | {g['goal']} | {_num(g['measured'])} | {'yes' if g['met'] else '**no**'} |"
        for g in results["goals"]
    ]
    lines = [
        f"# Tenantry benchmark, scenario 10 alone ({results['meta']['started_at']})",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
        *goal_rows,
        *fleet_section(results["scenarios"]),
    ]
    _write(md_path, ("\n".join(lines) + "\n").encode())
    return [json_path, md_path]


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    s = results["scenarios"]
    lines = [
        "# Tenantry benchmark",
        "",
        f"{meta['started_at']} · mode `{meta['mode']}` · {meta['duration_s']:.0f} s · "
        f"{meta['host']['cpus']} CPUs · Python {meta['host']['python']} · PostgreSQL "
        f"{meta['postgres'].get('server_version', '?')} (embedded, fsync={meta['postgres'].get('fsync', '?')}) · "
        "Temporal dev server",
        "",
        "## Goals",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for goal in results["goals"]:
        met = "yes" if goal["met"] else "**no**"
        lines.append(f"| {goal['description']} | {goal['goal']} | {_num(goal['measured'])} | {met} |")

    lines += [
        "",
        "## 1. RegisterTenant vs floors (ms)",
        "",
        "| c | RegisterTenant p50 / p99 | /s | worker busy: p50 / p99 | gRPC floor p50 | DB floor p50 / p99 "
        "| engine floor p50 / p99 | DB+engine p50 | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in s["register"]["levels"]:
        r, f, busy = level["register"], level["floors"], level["register_worker_busy"]
        lines.append(
            f"| {level['concurrency']} | {_ms(r)} / {_ms(r, 'p99_ms')} | {r['throughput_per_s']} "
            f"| {_ms(busy)} / {_ms(busy, 'p99_ms')} | {_ms(f['grpc'])} | {_ms(f['db'])} / {_ms(f['db'], 'p99_ms')} "
            f"| {_ms(f['engine'])} / {_ms(f['engine'], 'p99_ms')} | {level['db_plus_engine_p50_ms']:.1f} "
            f"| {_num(level['ratio_p50_vs_db_plus_engine'])} |"
        )

    first = s["register"]["levels"][0]
    lines += [
        "",
        f"CPU milliseconds per call at concurrency {first['concurrency']}, by process:",
        "",
        *_cpu_table(
            [
                ("RegisterTenant", first["register"]),
                ("gRPC floor", first["floors"]["grpc"]),
                ("DB floor", first["floors"]["db"]),
                ("engine floor", first["floors"]["engine"]),
            ],
            "cpu_ms_per_op",
        ),
    ]
    lines += [
        "",
        "## 2. Tenant-scoped reads: authentication + gate + access log vs the bare API (ms)",
        "",
        "| RPC | c | auth + gate + log p50 / p99 | bare API p50 / p99 | ratio p50 "
        "| server CPU ms/call with / without |",
        "|---|---|---|---|---|---|",
    ]
    for rpc, rows in s["reads"]["rpcs"].items():
        for row in rows:
            g, b = row["with_gate"], row["without_interceptors"]
            cpu_g = g.get("cpu_ms_per_op", {}).get("tenant-api")
            cpu_b = b.get("cpu_ms_per_op", {}).get("bare-api")
            lines.append(
                f"| {rpc} | {row['concurrency']} | {_ms(g)} / {_ms(g, 'p99_ms')} | {_ms(b)} / {_ms(b, 'p99_ms')} "
                f"| {_num(row['ratio_p50'])} | {_num(cpu_g)} / {_num(cpu_b)} |"
            )
    on_b = s["reads"].get("rpcs_shard_b")
    if on_b:
        lines += [
            "",
            "The same reads for a tenant on shard b (a second PostgreSQL server; tenant-api has two shards, the bare "
            "API runs against b); the single-shard ratio (a tenant on default, same API) next to it:",
            "",
            "| RPC | c | auth + gate + log p50 / p99 | bare API on b p50 / p99 | ratio p50 on b "
            "| ratio p50 on default |",
            "|---|---|---|---|---|---|",
        ]
        for rpc, rows in on_b.items():
            single = {row["concurrency"]: row["ratio_p50"] for row in s["reads"]["rpcs"].get(rpc, [])}
            for row in rows:
                g, b = row["with_gate"], row["without_interceptors"]
                lines.append(
                    f"| {rpc} | {row['concurrency']} | {_ms(g)} / {_ms(g, 'p99_ms')} | {_ms(b)} / {_ms(b, 'p99_ms')} "
                    f"| {_num(row['ratio_p50'])} | {_num(single.get(row['concurrency']))} |"
                )

    p = s["provisioning"]
    meta = results["meta"]
    t, ddl, eng = p["tenantry"], p["floors"]["db_ddl"], p["floors"]["engine"]
    lines += [
        "",
        f"## 3. Provisioning: {t['count']} registrations at once",
        "",
        "| | all done (s) | tenants/s | p50 (ms) | p95 (ms) |",
        "|---|---|---|---|---|",
        f"| Tenantry (register → ACTIVE) | {t['all_active_s']} | {t['tenants_per_s']} "
        f"| {_ms(t['register_to_active'])} | {_ms(t['register_to_active'], 'p95_ms')} |",
        f"| DDL floor (raw asyncpg, 20 connections) | {ddl['all_done_s']} | {ddl['tenants_per_s']} "
        f"| {_ms(ddl['submit_to_done'])} | {_ms(ddl['submit_to_done'], 'p95_ms')} |",
        f"| engine floor (no-op workflow + activity) | {eng['all_done_s']} | {eng['tenants_per_s']} "
        f"| {_ms(eng['start_to_done'])} | {_ms(eng['start_to_done'], 'p95_ms')} |",
        "",
        f"{t['active']}/{t['count']} ACTIVE, {t['errors']} RPC errors, {t['workflow_start_failed']} workflow starts "
        f"failed; ratio to the lower floor: {_num(p['ratio_throughput_vs_lower_floor'])}.",
        "",
        f"CPU milliseconds per tenant, by process (total: the stack, without the benchmark process; "
        f"{meta['host']['cpus']} CPUs give at most {1000 * meta['host']['cpus']} ms of CPU per second, so "
        f"{_num(p['cpu_bound_tenants_per_s'], 1)} tenants/s at Tenantry's total):",
        "",
        *_cpu_table([("Tenantry", t), ("DDL floor", ddl), ("engine floor", eng)], "cpu_ms_per_tenant"),
        "",
        "## 4. Growth",
        "",
        "| existing tenants | seeded (/s) | tenants/s | ms per tenant | register → ACTIVE p50 (ms) "
        "| ListProjects p50 / p99 (ms) | schemas | pg_class rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in s["growth"]["levels"]:
        prov, read, cat = level["provisioning"], level["read"], level["catalog"]
        seeded = f"{level.get('seeded', 0)} ({level.get('seed_per_s', '-')})"
        lines.append(
            f"| {level['existing_active_tenants']} | {seeded} | {prov['tenants_per_s']} | {prov['cost_ms_per_tenant']} "
            f"| {_ms(prov['register_to_active'])} | {_ms(read)} / {_ms(read, 'p99_ms')} "
            f"| {cat['tenant_schemas']} | {cat['pg_class_rows']} |"
        )
    d, bulk = s["deletion"]["sequential"], s["deletion"]["bulk"]
    lines += [
        "",
        "## 5. Deletion",
        "",
        "| | p50 (ms) | p95 (ms) | p99 (ms) |",
        "|---|---|---|---|",
        f"| DeleteTenant RPC (one at a time) | {_ms(d['delete_rpc'])} | {_ms(d['delete_rpc'], 'p95_ms')} "
        f"| {_ms(d['delete_rpc'], 'p99_ms')} |",
        f"| delete → DELETED (one at a time) | {_ms(d['delete_to_deleted'])} | {_ms(d['delete_to_deleted'], 'p95_ms')} "
        f"| {_ms(d['delete_to_deleted'], 'p99_ms')} |",
        f"| DeleteTenant RPC (bulk, c={bulk['concurrency']}) | {_ms(bulk['delete_rpc'])} "
        f"| {_ms(bulk['delete_rpc'], 'p95_ms')} | {_ms(bulk['delete_rpc'], 'p99_ms')} |",
        "",
        f"One at a time: {d['count']} deletions, final states {d['tenant_states_after']}, schemas left "
        f"{d['schemas_left']}. Bulk: {bulk['count']} deletions, all DELETED after {bulk['all_deleted_s']} s "
        f"({bulk['deleted_per_s']}/s), final states {bulk['tenant_states_after']}, "
        f"schemas left {bulk['schemas_left']}.",
        "",
        "## 6. Peak RSS (MiB)",
        "",
        "| process | peak |",
        "|---|---|",
    ]
    for name, peak in s["rss"]["peak_mib"].items():
        lines.append(f"| {name} | {peak} |")
    lines += _event_sections(s)
    lines += _lifecycle_section(s)
    lines += fleet_section(s)
    lines.append("")
    return "\n".join(lines)


def _event_sections(s: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## 7. Event write: RegisterTenant's statement with vs without the event CTEs (ms)",
        "",
        "| c | with event p50 / p99 | without p50 / p99 | ratio p50 | PostgreSQL CPU ms/call with / without |",
        "|---|---|---|---|---|",
    ]
    for row in s["event_write"]["levels"]:
        w, wo = row["with_event"], row["without_event"]
        cpu_w = w.get("cpu_ms_per_op", {}).get("postgres")
        cpu_wo = wo.get("cpu_ms_per_op", {}).get("postgres")
        lines.append(
            f"| {row['concurrency']} | {_ms(w)} / {_ms(w, 'p99_ms')} | {_ms(wo)} / {_ms(wo, 'p99_ms')} "
            f"| {_num(row['ratio_p50'])} | {_num(cpu_w)} / {_num(cpu_wo)} |"
        )
    d = s["event_delivery"]
    lat = d["commit_to_watcher"]
    lines += [
        "",
        f"## 8. Event delivery: {d['watchers']} watchers, {d['registrations']} registrations",
        "",
        "| commit → watcher (ms, upper bound) | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
        f"| event_time → received | {_ms(lat)} | {_ms(lat, 'p95_ms')} | {_ms(lat, 'p99_ms')} | {_ms(lat, 'max_ms')} |",
        "",
        f"Delivered {d['deliveries']} of {d['deliveries_expected']} (missing {d['missing']}, duplicates "
        f"{d['duplicates']}, out of order {d['out_of_order']}); {d['register_errors']} registration errors; "
        f"registrations took {d['registering_s']} s, the last delivery came {d['all_delivered_s']} s after the first "
        "registration. event_time is the registering transaction's start (PostgreSQL now()), before its commit, "
        "so these latencies are upper bounds.",
    ]
    return lines


_LIFECYCLE_ROWS = (
    ("suspend", "SuspendTenant (ACTIVE → SUSPENDED)"),
    ("resume", "ResumeTenant (SUSPENDED → ACTIVE)"),
    ("delete", "DeleteTenant (retained: ACTIVE → DELETING)"),
    ("undelete", "UndeleteTenant (DELETING → ACTIVE)"),
)


def _lifecycle_section(s: dict[str, Any]) -> list[str]:
    life = s["lifecycle"]
    lines = [
        "",
        f"## 9. Lifecycle changes, one at a time ({life['cycles']} cycles over {life['tenants']} tenants, ms)",
        "",
        "| RPC | p50 | p95 | p99 | floor: the same UPDATE, raw asyncpg, p50 / p95 | ratio p50 |",
        "|---|---|---|---|---|---|",
    ]
    for step, label in _LIFECYCLE_ROWS:
        row = life["steps"][step]
        rpc, floor = row["rpc"], row.get("floor")
        floor_text = f"{_ms(floor)} / {_ms(floor, 'p95_ms')}" if floor else "none"
        lines.append(
            f"| {label} | {_ms(rpc)} | {_ms(rpc, 'p95_ms')} | {_ms(rpc, 'p99_ms')} | {floor_text} "
            f"| {_num(row.get('ratio_p50'))} |"
        )
    errors = sum(life["steps"][step]["rpc"]["errors"] for step, _ in _LIFECYCLE_ROWS)
    wrong = sum(life["steps"][step]["rpc"]["response_wrong_state"] for step, _ in _LIFECYCLE_ROWS)
    lines += [
        "",
        f"{errors} RPC errors, {wrong} responses in an unexpected state; tenants after: {life['tenant_states_after']}. "
        "Delete and undelete go to tenant-api-retained (a day's retention); UndeleteTenant's work spans the "
        "database and the engine (it wakes the deletion workflow), so it has no single-statement floor.",
    ]
    return lines


def _cpu_table(rows: list[tuple[str, dict[str, Any]]], key: str) -> list[str]:
    names = [
        n for n in ("tenant-api", "provisioner-worker", "temporal", "postgres", "noop-worker", "bare-api", "bench")
    ]
    header = "| | " + " | ".join(names) + " | total |"
    out = [header, "|---" * (len(names) + 2) + "|"]
    for label, data in rows:
        cpu = data.get(key, {})
        out.append(
            f"| {label} | " + " | ".join(_num(cpu.get(n), 1) for n in names) + f" | {_num(cpu.get('total'), 1)} |"
        )
    return out


def write_markdown(results: dict[str, Any], directory: Path) -> Path:
    path = directory / "latest.md"
    _write(path, markdown(results).encode())
    return path


def write_chart(results: dict[str, Any], directory: Path) -> Path | None:
    """latest.png, or None when matplotlib is not installed (`pip install -e '.[bench]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = results["scenarios"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))

    levels = s["register"]["levels"]
    xs = [level["concurrency"] for level in levels]

    def series(pick: Any) -> list[float]:
        return [float(pick(level) or math.nan) for level in levels]

    left.plot(xs, series(lambda lv: lv["register"].get("p50_ms")), "o-", label="RegisterTenant p50", color="C0")
    left.plot(xs, series(lambda lv: lv["register"].get("p99_ms")), "o--", label="RegisterTenant p99", color="C0")
    left.plot(
        xs,
        series(lambda lv: lv["register_worker_busy"].get("p50_ms")),
        "o-.",
        label="RegisterTenant p50, worker busy",
        color="C4",
    )
    left.plot(xs, series(lambda lv: lv["db_plus_engine_p50_ms"]), "s-", label="DB + engine floor p50", color="C3")
    left.plot(xs, series(lambda lv: lv["floors"]["db"].get("p50_ms")), "^:", label="DB floor p50", color="C1")
    left.plot(xs, series(lambda lv: lv["floors"]["engine"].get("p50_ms")), "v:", label="engine floor p50", color="C2")
    left.plot(xs, series(lambda lv: lv["floors"]["grpc"].get("p50_ms")), "x:", label="gRPC floor p50", color="C7")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(xs, [str(x) for x in xs])
    left.set_xlabel("concurrency")
    left.set_ylabel("latency (ms)")
    left.set_title("RegisterTenant latency vs concurrency")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    growth = s["growth"]["levels"]
    gx = [level["existing_active_tenants"] for level in growth]
    right.plot(gx, [level["provisioning"]["tenants_per_s"] for level in growth], "o-", color="C0", label="tenants/s")
    right.set_xlabel("existing ACTIVE tenants")
    right.set_ylabel("provisioning throughput (tenants/s)", color="C0")
    right.set_ylim(bottom=0)
    right.set_title("Provisioning throughput and read latency vs tenant count")
    right.grid(True, alpha=0.3)
    twin = right.twinx()
    twin.plot(gx, [level["read"].get("p50_ms", math.nan) for level in growth], "s--", color="C1", label="read p50")
    twin.set_ylabel("ListProjects p50 (ms)", color="C1")
    twin.set_ylim(bottom=0)
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="lower left")
    fig.suptitle(f"Tenantry benchmark ({results['meta']['mode']}, {results['meta']['started_at']})")
    fig.tight_layout()
    path = directory / "latest.png"
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
