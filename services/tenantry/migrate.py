"""`tenantry-migrate`: applies the control-plane migrations; safe to run twice
or concurrently."""

from __future__ import annotations

import os
import sys

from tenantry.migrations import upgrade_control_plane
from tenantry.settings import SettingsError, database_url_from, exit_with_config_error


def main() -> None:
    try:
        url = database_url_from(os.environ)
    except SettingsError as exc:
        exit_with_config_error(str(exc))
    try:
        upgrade_control_plane(url)
    except (OSError, TimeoutError) as exc:
        print(f"tenantry-migrate: cannot reach the database: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print("control-plane migrations applied")


if __name__ == "__main__":
    main()
