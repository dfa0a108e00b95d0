"""Worker liveness as a file: touched while the worker runs, checked by the
container HEALTHCHECK (`python -m provisioner_worker.liveness`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tenantry.settings import liveness_file_from, load_or_exit

TOUCH_INTERVAL_SECONDS = 5.0
STALE_AFTER_SECONDS = 30.0


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
    sys.exit(0 if is_alive(load_or_exit(liveness_file_from)) else 1)
