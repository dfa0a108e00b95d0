"""Configuration from the environment: defaults, every malformed variable named in
one clear line, and the real console scripts exiting 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

import pytest

from tenantry.settings import (
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_NAMESPACE,
    DEFAULT_RECONCILE_INTERVAL_SECONDS,
    DEFAULT_TASK_QUEUE,
    Settings,
    SettingsError,
    database_url_from,
    load_or_exit,
    metrics_address_from,
    shutdown_grace_from,
)
from tenantry_dev.embedded import BIN_DIR

DATABASE_URL = "postgresql+asyncpg://tenantry:secret@127.0.0.1:1/tenantry"
TEMPORAL_ADDRESS = "127.0.0.1:1"
REQUIRED = {"TENANTRY_DATABASE_URL": DATABASE_URL, "TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS}


def test_defaults() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings == Settings(
        grpc_address=DEFAULT_GRPC_ADDRESS,
        database_url=DATABASE_URL,
        temporal_address=TEMPORAL_ADDRESS,
        temporal_namespace=DEFAULT_NAMESPACE,
        task_queue=DEFAULT_TASK_QUEUE,
        reconcile_interval_seconds=DEFAULT_RECONCILE_INTERVAL_SECONDS,
    )
    assert (DEFAULT_GRPC_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE) == (
        "127.0.0.1:50051",
        "default",
        "tenant-provisioning",
    )
    assert DEFAULT_RECONCILE_INTERVAL_SECONDS == 30
    assert shutdown_grace_from({}) == 10.0
    assert metrics_address_from({}, "127.0.0.1:9464") == "127.0.0.1:9464"


def test_blank_optional_variables_mean_default() -> None:
    blank = {
        "TENANTRY_GRPC_ADDRESS": "",
        "TENANTRY_TEMPORAL_NAMESPACE": "  ",
        "TENANTRY_TASK_QUEUE": "",
        "TENANTRY_RECONCILE_INTERVAL_SECONDS": " ",
    }
    assert Settings.from_env({**REQUIRED, **blank}) == Settings.from_env(REQUIRED)


def test_every_variable_is_read() -> None:
    env = {
        "TENANTRY_GRPC_ADDRESS": "0.0.0.0:6000",
        "TENANTRY_DATABASE_URL": " postgresql+asyncpg://postgres@/postgres?host=/tmp/pg ",
        "TENANTRY_TEMPORAL_ADDRESS": "temporal.internal:7233",
        "TENANTRY_TEMPORAL_NAMESPACE": "tenantry-prod",
        "TENANTRY_TASK_QUEUE": "tenant-provisioning-eu",
        "TENANTRY_RECONCILE_INTERVAL_SECONDS": "2.5",
    }
    assert Settings.from_env(env) == Settings(
        grpc_address="0.0.0.0:6000",
        database_url="postgresql+asyncpg://postgres@/postgres?host=/tmp/pg",
        temporal_address="temporal.internal:7233",
        temporal_namespace="tenantry-prod",
        task_queue="tenant-provisioning-eu",
        reconcile_interval_seconds=2.5,
    )
    assert Settings.from_env({**REQUIRED, "TENANTRY_GRPC_ADDRESS": "[::1]:50051"}).grpc_address == "[::1]:50051"
    assert shutdown_grace_from({"TENANTRY_SHUTDOWN_GRACE_SECONDS": "0.5"}) == 0.5
    assert metrics_address_from({"TENANTRY_METRICS_ADDRESS": "off"}, "127.0.0.1:9464") == ""
    assert metrics_address_from({"TENANTRY_METRICS_ADDRESS": "OFF"}, "127.0.0.1:9464") == ""


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TENANTRY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TENANTRY_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("TENANTRY_TEMPORAL_ADDRESS", TEMPORAL_ADDRESS)
    monkeypatch.setenv("TENANTRY_TASK_QUEUE", "from-os-environ")
    assert Settings.from_env().task_queue == "from-os-environ"


MALFORMED: list[tuple[str, str | None]] = [
    ("TENANTRY_DATABASE_URL", None),
    ("TENANTRY_DATABASE_URL", ""),
    ("TENANTRY_DATABASE_URL", "   "),
    ("TENANTRY_DATABASE_URL", "postgresql://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "postgres://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "postgresql+psycopg2://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "mysql://tenantry:secret@db/tenantry"),
    ("TENANTRY_DATABASE_URL", "secret"),
    ("TENANTRY_TEMPORAL_ADDRESS", None),
    ("TENANTRY_TEMPORAL_ADDRESS", ""),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:"),
    ("TENANTRY_TEMPORAL_ADDRESS", ":7233"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:port"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:70000"),
    ("TENANTRY_TEMPORAL_ADDRESS", "temporal:-1"),
    ("TENANTRY_GRPC_ADDRESS", "localhost"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:abc"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:65536"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:5 0"),
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:\u00b2"),  # superscript two: isdigit() but not int()
    ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:\uff15\uff10"),  # fullwidth digits
    ("TENANTRY_TEMPORAL_NAMESPACE", "my namespace"),
    ("TENANTRY_TEMPORAL_NAMESPACE", "ns\tx"),
    ("TENANTRY_TASK_QUEUE", "tenant provisioning"),
    ("TENANTRY_TASK_QUEUE", "queue\nx"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "abc"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "30s"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "0"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "-5"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "nan"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "inf"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "-inf"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "1e300"),
    ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "1e-9"),  # rounds to a zero interval
]


@pytest.mark.parametrize(("variable", "value"), MALFORMED, ids=lambda v: repr(v)[:40])
def test_malformed_variable_is_named(variable: str, value: str | None) -> None:
    env = dict(REQUIRED)
    if value is None:
        env.pop(variable, None)
    else:
        env[variable] = value
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message
    # A URL's password never reaches logs through an error message.
    assert "secret@" not in message


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan", "1e300"])
def test_malformed_shutdown_grace_is_named(value: str) -> None:
    with pytest.raises(SettingsError, match="TENANTRY_SHUTDOWN_GRACE_SECONDS"):
        shutdown_grace_from({"TENANTRY_SHUTDOWN_GRACE_SECONDS": value})


@pytest.mark.parametrize("value", ["nowhere", "127.0.0.1:port", "127.0.0.1:99999"])
def test_malformed_metrics_address_is_named(value: str) -> None:
    with pytest.raises(SettingsError, match="TENANTRY_METRICS_ADDRESS"):
        metrics_address_from({"TENANTRY_METRICS_ADDRESS": value}, "127.0.0.1:9464")


def test_database_url_from_needs_only_the_database() -> None:
    assert database_url_from({"TENANTRY_DATABASE_URL": DATABASE_URL}) == DATABASE_URL
    with pytest.raises(SettingsError, match="TENANTRY_DATABASE_URL"):
        database_url_from({})


def test_load_or_exit_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_or_exit({"TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS})
    assert caught.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "TENANTRY_DATABASE_URL" in lines[0]
    assert load_or_exit(REQUIRED) == Settings.from_env(REQUIRED)


# --- the real console scripts --------------------------------------------------

SCRIPTS = ("tenant-api", "provisioner-worker", "tenantry-migrate")
SERVICES = ("tenant-api", "provisioner-worker")


def _base_env() -> dict[str, str]:
    """A minimal environment: nothing TENANTRY_* leaks in from the test run."""
    env = {"PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": os.environ.get("HOME", "/tmp")}
    for name in ("LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    # Never bind real ports if a script got as far as serving metrics.
    env["TENANTRY_METRICS_ADDRESS"] = "off"
    env["TENANTRY_SDK_METRICS_ADDRESS"] = "off"
    return env


def _run_script(script: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    path = BIN_DIR / script
    assert path.exists(), f"{path} missing: is the project installed in the venv?"
    return subprocess.run(
        [str(path)], env=dict(env), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _assert_config_error(result: subprocess.CompletedProcess[str], variable: str) -> None:
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr + result.stdout, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert variable in lines[0], output
    assert "secret" not in result.stderr, output


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_without_database_url_exits_2(script: str) -> None:
    _assert_config_error(_run_script(script, _base_env()), "TENANTRY_DATABASE_URL")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_with_wrong_database_driver_exits_2(script: str) -> None:
    env = {**_base_env(), "TENANTRY_DATABASE_URL": "postgresql://tenantry:secret@127.0.0.1:1/tenantry"}
    _assert_config_error(
        _run_script(script, {**env, "TENANTRY_TEMPORAL_ADDRESS": TEMPORAL_ADDRESS}), "TENANTRY_DATABASE_URL"
    )


@pytest.mark.parametrize(
    ("script", "variable", "value"),
    [
        (script, variable, value)
        for script in SERVICES
        for variable, value in (
            ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "abc"),
            ("TENANTRY_RECONCILE_INTERVAL_SECONDS", "inf"),
            ("TENANTRY_TEMPORAL_ADDRESS", ""),
            ("TENANTRY_GRPC_ADDRESS", "127.0.0.1:\u00b2"),
            ("TENANTRY_SHUTDOWN_GRACE_SECONDS", "abc"),
            ("TENANTRY_METRICS_ADDRESS", "nowhere"),
        )
    ],
)
def test_service_with_malformed_variable_exits_2(script: str, variable: str, value: str) -> None:
    # Everything else is well-formed (and unreachable): the process must stop at
    # configuration, before it tries to connect anywhere.
    env = {**_base_env(), **REQUIRED, variable: value}
    _assert_config_error(_run_script(script, env), variable)


@pytest.mark.parametrize("value", ["nowhere", "localhost:9465"])
def test_worker_with_malformed_sdk_metrics_address_exits_2(value: str) -> None:
    # The Temporal SDK's Prometheus endpoint takes an IP socket address only.
    env = {**_base_env(), **REQUIRED, "TENANTRY_SDK_METRICS_ADDRESS": value}
    _assert_config_error(_run_script("provisioner-worker", env), "TENANTRY_SDK_METRICS_ADDRESS")
