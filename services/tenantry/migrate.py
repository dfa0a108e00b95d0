"""`tenantry-migrate`: applies the control-plane migrations; safe to run twice
or concurrently."""

from __future__ import annotations

import sys

from tenantry.migrations import upgrade_control_plane
from tenantry.settings import MigrateSettings, load_or_exit


def main() -> None:
    settings = load_or_exit(MigrateSettings.from_env)
    try:
        upgrade_control_plane(settings.database_url, settings.migrations_dir)
    except (OSError, TimeoutError) as exc:
        print(f"tenantry-migrate: cannot reach the database: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print("control-plane migrations applied")


if __name__ == "__main__":
    main()
