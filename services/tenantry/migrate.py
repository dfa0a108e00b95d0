"""`tenantry-migrate`: applies the control-plane migrations, then the table
privileges of the three database roles (tenantry.db_roles); safe to run twice
or concurrently. Run it as the migrator role.

`tenantry-migrate tenants [...]`: the fleet rollout of tenant schemas
(tenantry.fleet_rollout).

`tenantry-migrate roles`: creates those roles and their database-level rights
(idempotent; needs a superuser's TENANTRY_DATABASE_URL). Run it first, once per
database and again after upgrading Tenantry."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from tenantry.db.admission import CREATE_ADMISSION_TABLE
from tenantry.db_roles import MIGRATION_LOCK_KEY, ROLES, NotSuperuserError, apply_grants, create_roles
from tenantry.migrations import upgrade_control_plane
from tenantry.settings import MigrateSettings, load_or_exit

USAGE = (
    "usage: tenantry-migrate [roles | tenants [--to REV] [--canary N] [--concurrency N] [--max-failures N] [--detach]]"
)


class MissingRolesError(Exception):
    pass


async def grant_privileges(database_url: str, *, shard_only: bool = False) -> None:
    """apply_grants in a transaction of its own; MissingRolesError if
    `tenantry-migrate roles` has not run on this cluster. `shard_only`: a
    shard's database that is not the control plane's (its admission table is
    created here first; the control plane's comes with its migrations)."""
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            found = set(
                (
                    await conn.execute(
                        text("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(:r)"), {"r": list(ROLES)}
                    )
                ).scalars()
            )
            missing = [role for role in ROLES if role not in found]
            if missing:
                raise MissingRolesError(
                    f"roles {', '.join(missing)} do not exist: run `tenantry-migrate roles` as a superuser first"
                )
            if shard_only:
                # Under the lock apply_grants takes too: concurrent runs create it once.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                await conn.execute(text(CREATE_ADMISSION_TABLE))
            await apply_grants(conn, shard_only=shard_only)
    finally:
        await engine.dispose()


async def ensure_roles(database_url: str) -> None:
    """create_roles in a transaction of its own (as a superuser)."""
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await create_roles(conn)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tenants"]:
        # Imported here: the control-plane path needs none of it.
        from tenantry import fleet_rollout
        from tenantry.settings import MigrateTenantsSettings

        raise SystemExit(fleet_rollout.main(args[1:], load_or_exit(MigrateTenantsSettings.from_env)))
    if args not in ([], ["roles"]):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    settings = load_or_exit(MigrateSettings.from_env)
    try:
        # Shards on other databases hold tenant schemas only: roles and the
        # tenant-table privileges, no control-plane tables.
        other_shards = sorted({url for url in settings.shards.values() if url != settings.database_url})
        if args == ["roles"]:
            for url in [settings.database_url, *other_shards]:
                asyncio.run(ensure_roles(url))
            print("database roles ready")
            return
        upgrade_control_plane(settings.database_url, settings.migrations_dir)
        asyncio.run(grant_privileges(settings.database_url))
        for url in other_shards:
            asyncio.run(grant_privileges(url, shard_only=True))
    except (OSError, TimeoutError) as exc:
        print(f"tenantry-migrate: cannot reach the database: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (MissingRolesError, NotSuperuserError) as exc:
        print(f"tenantry-migrate: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except DBAPIError as exc:
        # Most often: not allowed (SQLSTATE 42501), e.g. `roles` without a superuser.
        print(f"tenantry-migrate: {exc.orig}", file=sys.stderr)
        raise SystemExit(1) from None
    print("control-plane migrations and privileges applied")


if __name__ == "__main__":
    main()
