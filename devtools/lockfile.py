"""Keeps requirements.lock honest without the network.

`make lock` resolves requirements.in (which names the pyproject files' sets) with
uv and then runs `stamp`: the lock's first line records a digest of everything the
resolution depended on (the dependency tables of both pyproject files, the
build-system requirements, requirements.in and uv's flags). `check` (make install,
make lint) recomputes that digest and fails in one line when it differs, i.e. when
a range, an extra or a flag changed since the lock was made. Re-resolving and
diffing would also need the network and would report "stale" whenever anything
new is published; the digest changes only when our inputs do.

    python devtools/lockfile.py stamp requirements.lock "<uv flags>"
    python devtools/lockfile.py check requirements.lock "<uv flags>"
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = ("pyproject.toml", "devtools/pyproject.toml", "client/pyproject.toml")
INPUT = "requirements.in"
PREFIX = "# inputs-sha256: "


def inputs_digest(flags: str, root: Path = ROOT) -> str:
    """Only what changes the resolution: editing [tool.*] leaves the lock fresh."""
    inputs: dict[str, Any] = {"flags": " ".join(flags.split())}
    for name in PYPROJECTS:
        data = tomllib.loads((root / name).read_text())
        project = data.get("project", {})
        inputs[name] = {
            "name": project.get("name"),
            "requires-python": project.get("requires-python"),
            "dependencies": project.get("dependencies", []),
            "optional-dependencies": project.get("optional-dependencies", {}),
            "build-system": data.get("build-system", {}).get("requires", []),
        }
    lines = (line.split("#", 1)[0].strip() for line in (root / INPUT).read_text().splitlines())
    inputs[INPUT] = [line for line in lines if line]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def stamp(lock: Path, flags: str) -> None:
    body = [line for line in lock.read_text().splitlines(keepends=True) if not line.startswith(PREFIX)]
    lock.write_text(f"{PREFIX}{inputs_digest(flags)}\n" + "".join(body))


def check(lock: Path, flags: str) -> str | None:
    """None when fresh, else the one line to print."""
    if not lock.is_file():
        return f"{lock.name} is missing: run 'make lock'"
    first = lock.read_text().split("\n", 1)[0]
    if not first.startswith(PREFIX):
        return f"{lock.name} has no '{PREFIX.strip()}' first line: run 'make lock'"
    if first.removeprefix(PREFIX).strip() != inputs_digest(flags):
        return (
            f"{lock.name} is stale: the dependencies in {', '.join(PYPROJECTS)} or {INPUT} changed since it was made; "
            "run 'make lock' and commit it"
        )
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("stamp", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    command, lock, flags = argv[0], Path(argv[1]), argv[2]
    if command == "stamp":
        stamp(lock, flags)
        return 0
    problem = check(lock, flags)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
