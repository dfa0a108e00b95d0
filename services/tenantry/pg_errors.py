"""Reading PostgreSQL error details through SQLAlchemy's asyncpg adapter."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
INVALID_SCHEMA_NAME = "3F000"
UNDEFINED_TABLE = "42P01"
# A lock wait ran out of lock_timeout (also NOWAIT).
LOCK_NOT_AVAILABLE = "55P03"
UNDEFINED_COLUMN = "42703"
# A tenant schema dropped under a running query surfaces as one of these.
SCHEMA_GONE_SQLSTATES = frozenset({INVALID_SCHEMA_NAME, UNDEFINED_TABLE})
# A table or column a query names is not there: the schema is gone (deleted)
# or older than the code (a schema-version problem). Which one, the catalog says.
SCHEMA_OBJECT_MISSING_SQLSTATES = frozenset({UNDEFINED_TABLE, UNDEFINED_COLUMN})
# SQLSTATE classes that mean "the database is not there right now", not a bug:
# connection exception, insufficient resources, operator intervention.
# Also 25P03: the server ended a session that sat idle in its transaction
# (idle_in_transaction_session_timeout); the connection is gone.
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57", IDLE_IN_TRANSACTION_SESSION_TIMEOUT)


@dataclass(frozen=True)
class PgError:
    sqlstate: str | None
    constraint_name: str | None


def pg_error(exc: DBAPIError) -> PgError:
    original = exc.orig
    driver_error = original.__cause__ if original is not None else None
    sqlstate = getattr(driver_error, "sqlstate", None) or getattr(original, "sqlstate", None)
    return PgError(sqlstate=sqlstate, constraint_name=getattr(driver_error, "constraint_name", None))
