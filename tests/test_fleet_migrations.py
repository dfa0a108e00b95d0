"""Tenant schema migrations across the fleet (design.md): the t0002 revision,
the gate's TENANT_SCHEMA_OUTDATED, and `tenantry-migrate tenants` rolling a
fleet forward on the real worker, PostgreSQL and Temporal: a few hundred
tenants, a canary stop, the failure limit, two upgrades racing for a tenant,
a worker killed mid-batch, the CLI's exit codes and lines."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import uuid

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from provisioner_worker.rollout import Outcome, RolloutActivities, Seen
from provisioner_worker.worker import build_worker
from tenant_api.headers import TENANT_SLUG_HEADER
from tenant_api.tenant_gate import OLDEST_SERVED_TENANT_REVISION
from tenantry import fleet_rollout
from tenantry.db.engine import driver_of
from tenantry.db.tenants import TENANT_REVISION_PATTERN
from tenantry.migrations import (
    render_tenant_step,
    tenant_head_revision,
    tenant_revisions,
    tenant_schema_script,
)
from tenantry.schema_names import quote_schema, schema_name_for
from tenantry.v1 import operation_pb2, operation_service_pb2, project_service_pb2
from tenantry_dev.embedded import BIN_DIR, DatabaseUrls
from tests.stack import (
    Stack,
    by_id,
    eventually,
    expect_error,
    fleet_at,
    migrate_tenants,
    migrated_events,
    register_active,
    replay_and_record,
    retire_fleet,
    service_env,
    settings_for,
    spawn,
    spawn_command,
)

HEAD = tenant_head_revision()


async def versions(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[str, int]:
    """How many of `ids` record each revision (the row and the schema's stamp must agree)."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for tenant_id in ids:
            recorded = await conn.scalar(text("SELECT schema_version FROM tenants WHERE id = :i"), {"i": tenant_id})
            stamped = await conn.scalar(
                text(f"SELECT version_num FROM {quote_schema(schema_name_for(tenant_id))}.alembic_version")
            )
            assert recorded == stamped, tenant_id
            counts[recorded] = counts.get(recorded, 0) + 1
    return counts


async def operation_name(out: str) -> str:
    match = re.search(r"operations/(fleet-migrate-\S+)", out)
    assert match, out
    return match.group(1)


# --- the lineage and its rendering ---------------------------------------------------


def test_revision_ids_sort_in_lineage_order() -> None:
    """The gate compares revisions as text: that is only right while ids sort as the lineage runs."""
    revisions = tenant_revisions()
    assert revisions == tuple(sorted(revisions))
    assert all(TENANT_REVISION_PATTERN.fullmatch(r) for r in revisions)
    assert revisions[-1] == HEAD == OLDEST_SERVED_TENANT_REVISION == "t0002"


def test_a_step_renders_once_for_a_placeholder_schema() -> None:
    step = render_tenant_step("t0001", "t0002")
    assert step is not None
    assert step[0].startswith("ALTER TABLE tenantry_tenant_schema_placeholder.projects ADD COLUMN archived")
    assert "SET version_num='t0002'" in step[1]
    assert render_tenant_step("t0001", "t0002") is step  # cached


async def test_rendered_upgrade_builds_what_a_new_schema_has(worker_engine: AsyncEngine) -> None:
    """A t0001 schema brought to head by the rendered step equals one created
    at head by the provisioning script (the catalog's columns and stamp)."""
    (old,) = await fleet_at(worker_engine, 1, "t0001")
    fresh = f"t_{uuid.uuid4().hex}"
    query = text(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = :s ORDER BY table_name, ordinal_position"
    )
    try:
        async with worker_engine.begin() as conn:
            await (await driver_of(conn)).execute(tenant_schema_script(fresh))
        activities = RolloutActivities(worker_engine)
        workflow_id = await _operation_row(worker_engine)
        assert await activities._upgrade_one(old, HEAD, workflow_id, "test") == Outcome.UPGRADED
        async with worker_engine.connect() as conn:
            upgraded = (await conn.execute(query, {"s": schema_name_for(old)})).all()
            created = (await conn.execute(query, {"s": fresh})).all()
        assert upgraded == created
        assert await versions(worker_engine, [old]) == {HEAD: 1}
    finally:
        async with worker_engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(fresh)} CASCADE"))
        await retire_fleet(worker_engine, [old])


async def _operation_row(engine: AsyncEngine) -> str:
    """A closed MIGRATE operation for activities driven directly by a test."""
    workflow_id = f"fleet-migrate-test-{uuid.uuid4().hex[:12]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO workflow_executions (workflow_id, kind, state, actor, target_revision) "
                "VALUES (:w, 'MIGRATE', 'SUCCEEDED', 'test', :t)"
            ),
            {"w": workflow_id, "t": HEAD},
        )
    return workflow_id


# --- the gate -------------------------------------------------------------------------


async def _downgrade_to_t0001(worker_engine: AsyncEngine, tenant_id: str) -> None:
    """What t0002's downgrade does, and the row recording it."""
    schema = quote_schema(schema_name_for(uuid.UUID(tenant_id)))
    async with worker_engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {schema}.projects DROP COLUMN archived"))
        await conn.execute(text(f"UPDATE {schema}.alembic_version SET version_num = 't0001'"))
        await conn.execute(text("UPDATE tenants SET schema_version = 't0001' WHERE id = :i"), {"i": tenant_id})


async def test_outdated_tenant_refused_until_rolled_out(
    stack: Stack, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    tenant = await register_active(stack.stubs)
    assert tenant.schema_version == HEAD
    await _downgrade_to_t0001(worker_engine, tenant.id)
    request = project_service_pb2.ListProjectsRequest()
    for metadata in (by_id(tenant.id), ((TENANT_SLUG_HEADER, tenant.slug),)):
        error = await expect_error(
            stack.stubs.projects.ListProjects(request, metadata=metadata, timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TENANT_SCHEMA_OUTDATED",
        )
        assert "t0001" in (error.details() or "")

    settings = settings_for(database_urls, temporal_client, stack.task_queue)
    code, out, err = await migrate_tenants(settings, "--canary", "0")
    assert code == 0, (out, err)
    created = await stack.stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name="kept", archived=True), metadata=by_id(tenant.id), timeout=10
    )
    assert created.project.archived


@pytest.mark.parametrize("missing", ["column", "table"])
async def test_missing_object_in_an_existing_schema_is_never_deleted(
    stack: Stack, worker_engine: AsyncEngine, missing: str
) -> None:
    """The row says t0002, the schema lacks what t0002 has: a schema-version
    problem (TENANT_SCHEMA_OUTDATED), never TENANT_DELETED."""
    tenant = await register_active(stack.stubs)
    schema = quote_schema(tenant.schema_name)
    statement = (
        f"ALTER TABLE {schema}.projects DROP COLUMN archived"
        if missing == "column"
        else f"DROP TABLE {schema}.projects"
    )
    async with worker_engine.begin() as conn:
        await conn.execute(text(statement))
    await expect_error(
        stack.stubs.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name="x"), metadata=by_id(tenant.id), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TENANT_SCHEMA_OUTDATED",
    )


# --- rollouts -------------------------------------------------------------------------


async def test_rollout_over_a_few_hundred_tenants(
    stack: Stack, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    ids = await fleet_at(worker_engine, 300, "t0001")
    try:
        settings = settings_for(database_urls, temporal_client, stack.task_queue)
        code, out, err = await migrate_tenants(settings, "--canary", "3", "--concurrency", "4")
        assert code == 0, (out, err)
        assert err == ""
        assert "SUCCEEDED: 300 tenants upgraded" in out
        assert re.search(r"done \d+/300, failed 0, remaining \d+, [\d.]+ tenants/s, ETA", out), out
        assert await versions(worker_engine, ids) == {HEAD: 300}
        assert await migrated_events(worker_engine, ids) == dict.fromkeys(ids, 1)

        workflow_id = await operation_name(out)
        operation = (
            await stack.stubs.operations.GetOperation(
                operation_service_pb2.GetOperationRequest(name=f"operations/{workflow_id}"), timeout=10
            )
        ).operation
        assert operation.kind == operation_pb2.OPERATION_KIND_MIGRATE
        assert operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
        assert operation.tenant_id == ""
        assert (operation.progress.total, operation.progress.succeeded, operation.progress.failed) == (300, 300, 0)

        # Nothing left: a rerun says so at once.
        code, out, err = await migrate_tenants(settings)
        assert (code, out, err) == (0, f"every live tenant is at {HEAD}: nothing to do\n", "")
    finally:
        await retire_fleet(worker_engine, ids)


async def test_canary_stop_then_failure_limit_then_resume(
    stack: Stack, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    ids = await fleet_at(worker_engine, 20, "t0001")
    broken = ids[0]  # the first canary (id order)
    schema = quote_schema(schema_name_for(broken))
    async with worker_engine.begin() as conn:
        # Injected failure: the column t0002 adds is there already.
        await conn.execute(text(f"ALTER TABLE {schema}.projects ADD COLUMN archived boolean"))
    try:
        settings = settings_for(database_urls, temporal_client, stack.task_queue)
        code, out, err = await migrate_tenants(settings, "--canary", "2")
        assert code == 1, (out, err)
        lines = err.splitlines()
        assert lines[0] == f"tenant {broken}: MIGRATION_FAILED: DuplicateColumnError (SQLSTATE 42701)"
        assert "FAILED: CANARY_FAILED" in lines[1]
        assert await versions(worker_engine, ids) == {"t0001": 20}  # the canary stopped everything

        # Without canaries, one failure tolerated: everybody else is upgraded.
        code, out, err = await migrate_tenants(settings, "--canary", "0", "--max-failures", "1")
        assert code == 1, (out, err)
        assert err.splitlines()[0] == f"tenant {broken}: MIGRATION_FAILED: DuplicateColumnError (SQLSTATE 42701)"
        assert "TENANTS_FAILED: 1 tenants failed" in err
        assert "1 live tenants below t0002" in err
        assert await versions(worker_engine, ids) == {"t0001": 1, HEAD: 19}

        # Fixed, re-run: resumes with the one left.
        async with worker_engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {schema}.projects DROP COLUMN archived"))
        code, out, err = await migrate_tenants(settings)
        assert code == 0, (out, err)
        assert "SUCCEEDED: 1 tenants upgraded" in out
        assert await versions(worker_engine, ids) == {HEAD: 20}
        assert await migrated_events(worker_engine, ids) == dict.fromkeys(ids, 1)
    finally:
        await retire_fleet(worker_engine, ids)


@pytest.mark.parametrize("at_once", [True, False], ids=["one-round-trip", "careful"])
async def test_two_upgrades_racing_for_a_tenant_upgrade_it_once(
    engine: AsyncEngine, worker_engine: AsyncEngine, at_once: bool
) -> None:
    """Two rollouts' upgrades of one tenant, both queued on its row lock
    (held here until both wait): one upgrades, the other finds it done. With
    `at_once`, both were read at t0001 by their batch and send the whole
    transaction at once: the loser's row guard sees the winner's commit, and
    its careful retry finds the tenant at the target."""
    (tenant_id,) = await fleet_at(worker_engine, 1, "t0001")
    first, second = await _operation_row(worker_engine), await _operation_row(worker_engine)
    activities = RolloutActivities(worker_engine)
    seen = Seen("ACTIVE", "t0001", schema_name_for(tenant_id)) if at_once else None
    try:
        async with engine.connect() as holder:
            await holder.execute(text("SELECT 1 FROM tenants WHERE id = :i FOR UPDATE"), {"i": tenant_id})
            racing = [
                asyncio.create_task(activities._upgrade_one(tenant_id, HEAD, first, "test", seen)),
                asyncio.create_task(activities._upgrade_one(tenant_id, HEAD, second, "test", seen)),
            ]

            async def both_waiting() -> bool:
                async with engine.connect() as conn:
                    waiting = await conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE '%FROM tenants%FOR UPDATE OF t%'"
                        )
                    )
                return waiting == 2 or any(task.done() for task in racing)

            await eventually(both_waiting, timeout=1.5, interval=0.02)
            assert not any(task.done() for task in racing)
            await holder.rollback()
        outcomes = sorted(await asyncio.gather(*racing))
        assert outcomes == sorted([Outcome.UPGRADED, Outcome.SKIPPED])
        assert await migrated_events(worker_engine, [tenant_id]) == {tenant_id: 1}
        assert await versions(worker_engine, [tenant_id]) == {HEAD: 1}
    finally:
        await retire_fleet(worker_engine, [tenant_id])


async def test_worker_killed_mid_rollout_finishes_every_tenant_once(
    engine: AsyncEngine,
    worker_engine: AsyncEngine,
    database_urls: DatabaseUrls,
    temporal_client: Client,
) -> None:
    """The worker process is killed while a tenant's upgrade is in flight
    (held there by an event trigger until the kill); another worker takes the
    batch over (its retry finds the first 61 done) and the re-attached command
    sees every tenant upgraded once."""
    ids = await fleet_at(worker_engine, 90, "t0001")
    stalled = ids[60]
    queue = f"fleet-{uuid.uuid4().hex[:8]}"
    settings = settings_for(database_urls, temporal_client, queue)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE fleet_test_release (released boolean)"))
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION fleet_test_stall() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
                BEGIN
                    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c
                               WHERE c.schema_name = '{schema_name_for(stalled)}') THEN
                        WHILE NOT EXISTS (SELECT 1 FROM fleet_test_release) LOOP
                            PERFORM pg_sleep(0.05);
                        END LOOP;
                    END IF;
                END $$"""
            )
        )
        await conn.execute(
            text(
                "CREATE EVENT TRIGGER fleet_test_stall ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
                "EXECUTE FUNCTION fleet_test_stall()"
            )
        )
    worker = spawn(
        "worker",
        "provisioner_worker",
        service_env(database_urls.worker, settings.temporal_address, queue, TENANTRY_RECONCILE_INTERVAL_SECONDS="3600"),
    )
    try:
        code, out, err = await migrate_tenants(
            settings, "--canary", "0", "--concurrency", "1", "--batch-size", "40", "--detach"
        )
        assert code == 0, (out, err)
        workflow_id = await operation_name(out)

        async def stalled_at_the_tenant() -> bool:
            worker.check_alive()
            async with engine.connect() as conn:
                sleeping = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"))
                done = await conn.scalar(
                    text("SELECT progress_succeeded FROM workflow_executions WHERE workflow_id = :w"),
                    {"w": workflow_id},
                )
            return bool(sleeping) and done == 60

        await eventually(stalled_at_the_tenant, timeout=60)
        worker.stop(signal.SIGKILL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP EVENT TRIGGER fleet_test_stall"))
            await conn.execute(text("INSERT INTO fleet_test_release VALUES (true)"))

        # The stalled tenant's whole script (DDL, stamp, event, COMMIT) reached
        # the server before the kill: released, the server finishes and commits
        # it without its client. The batch's retry must then skip it.
        async def stalled_tenant_committed() -> bool:
            return await versions(worker_engine, ids) == {HEAD: 61, "t0001": 29}

        await eventually(stalled_tenant_committed, timeout=10)

        # Re-attach while no worker runs it (so it is surely still open), then
        # start the worker that takes the batch over.
        screen, errors = io.StringIO(), io.StringIO()
        command = asyncio.create_task(
            fleet_rollout.run(fleet_rollout.parser().parse_args([]), settings, screen, errors)
        )

        async def attached() -> bool:
            assert not command.done(), (screen.getvalue(), errors.getvalue())
            return "re-attached" in screen.getvalue()

        await eventually(attached, timeout=30, interval=0.05)
        async with build_worker(temporal_client, worker_engine, queue):
            code = await asyncio.wait_for(command, 120)
        out, err = screen.getvalue(), errors.getvalue()
        assert code == 0, (out, err)
        assert f"re-attached to operations/{workflow_id}" in out
        assert "SUCCEEDED: 90 tenants upgraded" in out
        assert await versions(worker_engine, ids) == {HEAD: 90}
        assert await migrated_events(worker_engine, ids) == dict.fromkeys(ids, 1)
    finally:
        worker.stop(signal.SIGKILL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP EVENT TRIGGER IF EXISTS fleet_test_stall"))
            await conn.execute(text("DROP FUNCTION IF EXISTS fleet_test_stall()"))
            await conn.execute(text("DROP TABLE IF EXISTS fleet_test_release"))
        await retire_fleet(worker_engine, ids)


# --- the command's own answers -------------------------------------------------------


async def test_usage_errors_exit_2(database_urls: DatabaseUrls, temporal_client: Client) -> None:
    settings = settings_for(database_urls, temporal_client, "unused")
    code, out, err = await migrate_tenants(settings, "--to", "t9999")
    assert (code, out) == (2, "")
    assert err.startswith("tenantry-migrate tenants: unknown tenant revision 't9999'")
    assert fleet_rollout.main(["--concurrency", "0"], settings) == 2
    assert fleet_rollout.main(["--max-failures", "-1"], settings) == 2


async def test_reconciler_reports_schemas_behind_head_and_tenants_without_schema(
    worker_engine: AsyncEngine, temporal_client: Client
) -> None:
    from provisioner_worker.reconciler import ReconcilerActivities, ReconcileReport
    from tenantry.operation_starter import OperationStarter

    reconciler = ReconcilerActivities(worker_engine, temporal_client, OperationStarter(temporal_client, "unused"))
    before = ReconcileReport()
    await reconciler._find_schema_drift(before)
    ids = await fleet_at(worker_engine, 3, "t0001")
    try:
        async with worker_engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {quote_schema(schema_name_for(ids[0]))} CASCADE"))
        after = ReconcileReport()
        await reconciler._find_schema_drift(after)
        assert after.schemas_behind_head_count == before.schemas_behind_head_count + 3
        assert after.tenants_without_schema_count == before.tenants_without_schema_count + 1
        assert str(ids[0]) in after.tenants_without_schema or after.tenants_without_schema_count > 20
    finally:
        await retire_fleet(worker_engine, ids)


def test_the_terminal_bar_shows_done_failed_remaining_and_rate() -> None:
    screen = io.StringIO()
    bar = fleet_rollout.BarProgress("operations/fleet-migrate-x", file=screen, width=160)
    bar.update(fleet_rollout.Snapshot("RUNNING", 300, 0, 0))
    bar.update(fleet_rollout.Snapshot("SUCCEEDED", 300, 297, 3), force=True)
    bar.close()
    final = screen.getvalue().splitlines()[-1]
    assert "operations/fleet-migrate-x" in final
    assert "300/300" in final  # done (upgraded and failed) of total
    assert "failed 3  remaining 0" in final
    assert re.search(r"[\d.]+ tenants/s", final)
    assert "ETA" in final


async def test_ctrl_c_detaches_and_the_rollout_stays_open(
    engine: AsyncEngine, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    """The command as a process, following a rollout no worker runs (its
    queue has none): SIGINT detaches with exit 130; the operation stays open."""
    (tenant_id,) = await fleet_at(worker_engine, 1, "t0001")
    queue = f"fleet-idle-{uuid.uuid4().hex[:8]}"
    env = service_env(database_urls.migrator, temporal_client.service_client.config.target_host, queue)
    command = spawn_command("migrate", [str(BIN_DIR / "tenantry-migrate"), "tenants"], env)
    workflow_id = ""
    try:

        async def following() -> str:
            command.check_alive()
            match = re.search(r"started operations/(\S+)", command.log_path.read_text())
            return match.group(1) if match else ""

        workflow_id = await eventually(following, timeout=30)
        # Following (or about to): either way Ctrl-C detaches.
        command.process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(command.process.wait, 30) == 130
        assert "detached: the rollout goes on" in command.log_path.read_text()
        async with engine.connect() as conn:
            state = await conn.scalar(
                text("SELECT state FROM workflow_executions WHERE workflow_id = :w"), {"w": workflow_id}
            )
        assert state == "PENDING"
    finally:
        command.stop(signal.SIGKILL)
        if workflow_id:
            await temporal_client.get_workflow_handle(workflow_id).terminate()
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE workflow_executions SET state = 'CANCELLED' WHERE workflow_id = :w"),
                    {"w": workflow_id},
                )
        await retire_fleet(worker_engine, [tenant_id])


async def test_replay_of_a_rollout_history(
    stack: Stack, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    """A rollout's history (canary, batches, a failed tenant) replays on the
    current workflow code; TENANTRY_WRITE_HISTORIES=1 commits it to
    tests/histories (test_provisioning replays every committed one)."""
    ids = await fleet_at(worker_engine, 6, "t0001")
    async with worker_engine.begin() as conn:
        await conn.execute(
            text(f"ALTER TABLE {quote_schema(schema_name_for(ids[3]))}.projects ADD COLUMN archived boolean")
        )
    try:
        settings = settings_for(database_urls, temporal_client, stack.task_queue)
        code, out, err = await migrate_tenants(settings, "--canary", "1", "--max-failures", "1", "--batch-size", "2")
        assert code == 1, (out, err)
        await replay_and_record(temporal_client, await operation_name(out), "fleet-migrate")
    finally:
        await retire_fleet(worker_engine, ids)


async def test_a_busy_tenant_is_retried_later_not_failed(
    stack: Stack, engine: AsyncEngine, worker_engine: AsyncEngine, database_urls: DatabaseUrls, temporal_client: Client
) -> None:
    """A tenant whose table is in use (a long transaction holds a lock on it)
    gives way after lock_timeout; the rest of the fleet goes on, and once the
    lock is gone the retry upgrades it."""
    ids = await fleet_at(worker_engine, 5, "t0001")
    busy = ids[2]
    settings = settings_for(database_urls, temporal_client, stack.task_queue)
    try:
        async with engine.connect() as holder:
            await holder.execute(
                text(f"LOCK TABLE {quote_schema(schema_name_for(busy))}.projects IN ACCESS SHARE MODE")
            )
            code, out, err = await migrate_tenants(settings, "--canary", "0", "--detach")
            assert code == 0, (out, err)
            workflow_id = await operation_name(out)

            async def the_others_done() -> bool:
                async with engine.connect() as conn:
                    done = await conn.scalar(
                        text("SELECT progress_succeeded FROM workflow_executions WHERE workflow_id = :w"),
                        {"w": workflow_id},
                    )
                return bool(done == 4)

            await eventually(the_others_done, timeout=60)
            assert await versions(worker_engine, ids) == {HEAD: 4, "t0001": 1}
            await holder.rollback()

        async def finished() -> tuple[str, int, int, int] | None:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT state, progress_total, progress_succeeded, progress_failed "
                            "FROM workflow_executions WHERE workflow_id = :w AND state NOT IN ('PENDING', 'RUNNING')"
                        ),
                        {"w": workflow_id},
                    )
                ).one_or_none()
            return None if row is None else tuple(row)

        assert await eventually(finished, timeout=90) == ("SUCCEEDED", 5, 5, 0)
        code, out, err = await migrate_tenants(settings)
        assert (code, out, err) == (0, f"every live tenant is at {HEAD}: nothing to do\n", "")
        assert await versions(worker_engine, ids) == {HEAD: 5}
        assert await migrated_events(worker_engine, ids) == dict.fromkeys(ids, 1)
    finally:
        await retire_fleet(worker_engine, ids)


@pytest.mark.parametrize("at_once", [True, False], ids=["one-round-trip", "careful"])
async def test_a_schema_whose_stamp_disagrees_with_its_row_is_failed_not_upgraded(
    worker_engine: AsyncEngine, at_once: bool
) -> None:
    (tenant_id,) = await fleet_at(worker_engine, 1, "t0001")
    schema = quote_schema(schema_name_for(tenant_id))
    async with worker_engine.begin() as conn:
        await conn.execute(text(f"UPDATE {schema}.alembic_version SET version_num = 't0002'"))
    workflow_id = await _operation_row(worker_engine)
    seen = Seen("ACTIVE", "t0001", schema_name_for(tenant_id)) if at_once else None
    try:
        assert await RolloutActivities(worker_engine)._upgrade_one(tenant_id, HEAD, workflow_id, "test", seen) == (
            Outcome.FAILED
        )
        async with worker_engine.connect() as conn:
            reason = await conn.scalar(
                text("SELECT reason FROM rollout_failures WHERE workflow_id = :w AND tenant_id = :t"),
                {"w": workflow_id, "t": tenant_id},
            )
            recorded = await conn.scalar(text("SELECT schema_version FROM tenants WHERE id = :t"), {"t": tenant_id})
            columns = await conn.scalar(
                text(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = :s AND column_name = 'archived'"
                ),
                {"s": schema_name_for(tenant_id)},
            )
        assert reason == "VERSION_MISMATCH: the schema's own stamp differs from the tenant's record"
        assert (recorded, columns) == ("t0001", 0)
    finally:
        await retire_fleet(worker_engine, [tenant_id])


async def test_a_tenant_changed_since_its_batch_read_it_is_upgraded_as_it_is_now(worker_engine: AsyncEngine) -> None:
    """The batch read the tenant ACTIVE; it was suspended before its upgrade:
    the one-round-trip transaction's row guard stops it (nothing applied), and
    the careful path upgrades it with a SUSPENDED event."""
    (tenant_id,) = await fleet_at(worker_engine, 1, "t0001")
    workflow_id = await _operation_row(worker_engine)
    async with worker_engine.begin() as conn:
        await conn.execute(text("UPDATE tenants SET state = 'SUSPENDED' WHERE id = :t"), {"t": tenant_id})
    seen = Seen("ACTIVE", "t0001", schema_name_for(tenant_id))
    try:
        outcome = await RolloutActivities(worker_engine)._upgrade_one(tenant_id, HEAD, workflow_id, "test", seen)
        assert outcome == Outcome.UPGRADED
        async with worker_engine.connect() as conn:
            states = (
                await conn.execute(
                    text(
                        "SELECT state FROM tenant_events WHERE tenant_id = :t AND type = 'SCHEMA_MIGRATED' "
                        "AND operation = :w"
                    ),
                    {"t": tenant_id, "w": workflow_id},
                )
            ).scalars()
            assert list(states) == ["SUSPENDED"]
        assert await versions(worker_engine, [tenant_id]) == {HEAD: 1}
    finally:
        await retire_fleet(worker_engine, [tenant_id])
