"""Worker liveness as a file: touched while the worker runs, checked by the
container HEALTHCHECK (`python -m provisioner_worker.liveness`)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

DEFAULT_LIVENESS_FILE = "/tmp/provisioner-worker.alive"
TOUCH_INTERVAL_SECONDS = 5.0
STALE_AFTER_SECONDS = 30.0


def liveness_file() -> Path:
    return Path(os.environ.get("TENANTRY_WORKER_LIVENESS_FILE") or DEFAULT_LIVENESS_FILE)


async def keep_alive(path: Path) -> None:
    try:
        while True:
            await asyncio.to_thread(path.touch)
            await asyncio.sleep(TOUCH_INTERVAL_SECONDS)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def is_alive(path: Path, now: float | None = None) -> bool:
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age < STALE_AFTER_SECONDS


if __name__ == "__main__":
    sys.exit(0 if is_alive(liveness_file()) else 1)
