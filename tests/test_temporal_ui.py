"""`make dev` serves the Web UI the bundled Temporal CLI contains: the dev
server command tenantry-dev runs, started for real, answers HTTP on its UI port
(only on loopback, with the news feed off)."""

from __future__ import annotations

import asyncio
import os
import urllib.request

from tenantry_dev.embedded import free_port, temporal_dev_server_command, temporal_is_healthy
from tests.stack import eventually, spawn_command, stopping


def _ui_page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        body: bytes = response.read()
        return body.decode(errors="replace") if response.status == 200 else ""


async def test_the_dev_server_serves_its_web_ui() -> None:
    port, ui_port = free_port(), free_port()
    command = temporal_dev_server_command("127.0.0.1", port, ui_port=ui_port)
    assert "--headless" not in command and "--ui-disable-news-fetch" in command
    server = spawn_command("temporal-ui", command, dict(os.environ))
    with stopping(server):
        await eventually(lambda: temporal_is_healthy(f"127.0.0.1:{port}"), timeout=60)

        async def ui_up() -> bool:
            try:
                page = await asyncio.to_thread(_ui_page, f"http://127.0.0.1:{ui_port}/")
                return page.lstrip().lower().startswith("<!doctype html")
            except OSError:
                return False

        assert await eventually(ui_up, timeout=30)
    assert "--headless" in temporal_dev_server_command("127.0.0.1", port)
