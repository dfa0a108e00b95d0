"""The soak's report: JSON with the counts and a chart of throughput and error
rate over time with the faults marked on it (matplotlib: the `bench` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soak.ledger import Ledger

# Answers that say the call could not be served (now), as opposed to a refusal
# the caller asked for (a stale etag, a wrong state): the chart's error rate.
ERROR_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "GAVE_UP"}


def timeline(ledger: Ledger, bucket: float) -> list[dict[str, float]]:
    end = max((e.t for e in ledger.entries), default=0.0)
    rows = []
    for i in range(int(end // bucket) + 1):
        start = i * bucket
        inside = [e for e in ledger.entries if start <= e.t < start + bucket]
        errors = sum(1 for e in inside if e.code in ERROR_CODES)
        rows.append(
            {
                "t": start,
                "calls_per_s": round(len(inside) / bucket, 2),
                "ok_per_s": round(sum(1 for e in inside if e.code == "OK") / bucket, 2),
                "error_rate": round(errors / len(inside), 4) if inside else 0.0,
            }
        )
    return rows


def write(output: Path, results: dict[str, Any], ledger: Ledger) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / "latest.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(output / "latest.json")
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["timeline"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    t = [r["t"] for r in rows]
    top.plot(t, [r["calls_per_s"] for r in rows], label="calls/s")
    top.plot(t, [r["ok_per_s"] for r in rows], label="OK/s")
    top.set_ylabel("calls per second")
    bottom.plot(t, [100 * r["error_rate"] for r in rows], color="tab:red", label="unavailable / deadline, %")
    bottom.set_ylabel("error rate, %")
    bottom.set_xlabel("seconds since the load started")
    colors = {
        "worker_kill": "tab:orange",
        "api_kill": "tab:purple",
        "postgres_restart": "tab:brown",
        "temporal_restart": "tab:green",
        "worker_freeze": "tab:cyan",
    }
    begins = [(at, name) for at, name, phase in ledger.faults if phase == "begin"]
    seen: set[str] = set()
    for axis in (top, bottom):
        for at, name in begins:
            kind = name.split(":")[0]
            label = kind if axis is top and kind not in seen else None
            if label:
                seen.add(kind)
            axis.axvline(at, color=colors.get(kind, "gray"), linestyle="--", alpha=0.8, label=label)
    top.legend(loc="upper left", fontsize=7, ncol=4)
    bottom.legend(loc="upper left", fontsize=7)
    verdict = "0 violations" if not results["violations"] else f"{len(results['violations'])} VIOLATIONS"
    top.set_title(
        f"Tenantry soak: seed {results['config']['seed']}, {results['calls']} calls, "
        f"{len(results['faults'])} faults, {verdict}"
    )
    fig.tight_layout()
    fig.savefig(output / "latest.png", dpi=90)
    plt.close(fig)
