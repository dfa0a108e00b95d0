"""Activity options: the heartbeat interval follows from the heartbeat timeout,
and the options the workflows send are the ones the recorded histories hold."""

from __future__ import annotations

import json
from datetime import timedelta

from provisioner_worker.heartbeat import heartbeat_interval
from provisioner_worker.workflows import HEARTBEAT_TIMEOUT, PROVISION_RETRY, STEP_TIMEOUT, UNTIL_DONE_RETRY, step
from tests.stack import HISTORIES_DIR


def test_heartbeat_interval_is_half_the_timeout() -> None:
    assert heartbeat_interval(HEARTBEAT_TIMEOUT) == timedelta(seconds=5)
    assert heartbeat_interval(timedelta(seconds=3)) == timedelta(seconds=1.5)
    # No heartbeat timeout: nothing waits for a beat, so none is sent.
    assert heartbeat_interval(None) is None
    assert heartbeat_interval(timedelta(0)) is None


def test_step_options() -> None:
    assert step(PROVISION_RETRY) == {
        "start_to_close_timeout": STEP_TIMEOUT,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "retry_policy": PROVISION_RETRY,
    }
    assert step(UNTIL_DONE_RETRY, timeout=timedelta(minutes=2))["start_to_close_timeout"] == timedelta(minutes=2)


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_recorded_histories_hold_the_same_options() -> None:
    """Written before the options moved into step(): every activity heartbeats
    within HEARTBEAT_TIMEOUT and the tenant steps keep their timeouts."""
    expected_start_to_close = {
        "provision_tenant": STEP_TIMEOUT,
        "fail_provisioning": STEP_TIMEOUT,
        "purge_tenant": STEP_TIMEOUT,
        "cancel_provisioning": timedelta(minutes=2),
    }
    seen = set()
    for path in sorted(HISTORIES_DIR.glob("*.json")):
        for event in json.loads(path.read_text())["events"]:
            scheduled = event.get("activityTaskScheduledEventAttributes")
            if scheduled is None:
                continue
            name = scheduled["activityType"]["name"]
            seen.add(name)
            assert _seconds(scheduled["heartbeatTimeout"]) == HEARTBEAT_TIMEOUT.total_seconds()
            if name in expected_start_to_close:
                assert _seconds(scheduled["startToCloseTimeout"]) == expected_start_to_close[name].total_seconds()
    rollout = {"begin_rollout", "migrate_batch", "finish_rollout"}
    move = {"prepare_move", "bulk_copy", "switch", "drop_old_copy", "abort_move"}
    assert (
        set(expected_start_to_close) | {"reconcile", "check_deletion_requested", "purge_when_due"} | rollout | move
        == seen
    )
