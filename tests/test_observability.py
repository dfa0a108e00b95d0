"""Log lines: JSON with the request's context."""

from __future__ import annotations

import json
import logging

from tenantry.observability import JsonFormatter, log_context


def test_json_log_lines_carry_request_context() -> None:
    token = log_context.set({"rpc_method": "/x.Y/Z", "request_id": "r-1"})
    try:
        record = logging.LogRecord("t", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
        record.workflow_id = "tenant-provision-1"
        line = json.loads(JsonFormatter("tenant-api").format(record))
    finally:
        log_context.reset(token)
    assert line["message"] == "hello world" and line["level"] == "warning" and line["service"] == "tenant-api"
    assert line["rpc_method"] == "/x.Y/Z" and line["request_id"] == "r-1"
    assert line["workflow_id"] == "tenant-provision-1"
