"""ProjectService logic: data in the tenant's own schema.

Every method works in the session of the admitted call (`TenantScope.session`),
whose connection names the tenant's schema per statement through
`schema_translate_map`, never through `search_path`: pooled connections carry
no tenant state between requests and prepared statements are per-schema.
That session is already in the call's transaction, which commits when the call
returns: no method here begins, commits or rolls back (see call_transaction).
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from tenant_api import pagination
from tenant_api.errors import already_exists, not_found
from tenant_api.tenant_gate import TenantScope
from tenantry.db.models import Project
from tenantry.pg_errors import UNIQUE_VIOLATION, pg_error

# Listing order: creation time, then id (ix_projects_create_time_id).
_KEYSET: pagination.Keyset[Project, uuid.UUID] = pagination.Keyset(
    Project.create_time, Project.id, uuid.UUID, lambda project: (project.create_time, project.id)
)


class Projects:
    def __init__(self, page_tokens: pagination.PageTokens) -> None:
        self._page_tokens = page_tokens

    async def create(self, scope: TenantScope, name: str, description: str, archived: bool = False) -> Project:
        try:
            return (
                await scope.session.scalars(
                    insert(Project)
                    .values(id=uuid.uuid4(), name=name, description=description, archived=archived)
                    .returning(Project)
                )
            ).one()
        except IntegrityError as exc:
            if pg_error(exc).sqlstate == UNIQUE_VIOLATION:
                raise already_exists("PROJECT_NAME_TAKEN", f"project {name!r} exists", name=name) from exc
            raise

    async def get(self, scope: TenantScope, project_id: uuid.UUID) -> Project:
        project = (await scope.session.scalars(select(Project).where(Project.id == project_id))).one_or_none()
        if project is None:
            raise not_found("PROJECT_NOT_FOUND", f"project {project_id} not found", project_id=str(project_id))
        return project

    async def list(self, scope: TenantScope, size: int, token: str) -> tuple[list[Project], str]:
        # The admitted tenant is part of what the token signs: a token from
        # tenant A's listing is refused on tenant B's.
        request = pagination.PageRequest(size, token, f"projects:{scope.tenant_id}", self._page_tokens)
        projects = list((await scope.session.scalars(_KEYSET.select(select(Project), request))).all())
        return _KEYSET.page(projects, request)

    async def delete(self, scope: TenantScope, project_id: uuid.UUID) -> None:
        deleted = (
            await scope.session.execute(delete(Project).where(Project.id == project_id).returning(Project.id))
        ).one_or_none()
        if deleted is None:
            raise not_found("PROJECT_NOT_FOUND", f"project {project_id} not found", project_id=str(project_id))
