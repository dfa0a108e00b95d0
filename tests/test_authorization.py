"""Per-RPC permissions come from the contract: every method of our services
declares one, and a method without one is refused for everybody."""

from __future__ import annotations

import importlib
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool

from tenant_api.authentication import Principal
from tenant_api.authorization import authorize, check_tenant, is_public, required_permission
from tenant_api.errors import ApiError
from tenantry.v1 import options_pb2

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto" / "tenantry" / "v1"

PERMISSIONS = frozenset(
    {
        "tenants.create",
        "tenants.get",
        "tenants.update",
        "tenants.delete",
        "tenants.purge",
        "tenants.move",
        "operations.get",
        "events.list",
        "projects.read",
        "projects.write",
    }
)

# The table, for the RPCs that exist today.
EXPECTED = {
    "/tenantry.v1.TenantService/RegisterTenant": "tenants.create",
    "/tenantry.v1.TenantService/GetTenant": "tenants.get",
    "/tenantry.v1.TenantService/ListTenants": "tenants.get",
    "/tenantry.v1.TenantService/DeleteTenant": "tenants.delete",
    "/tenantry.v1.TenantService/UpdateTenant": "tenants.update",
    "/tenantry.v1.TenantService/SuspendTenant": "tenants.update",
    "/tenantry.v1.TenantService/ResumeTenant": "tenants.update",
    "/tenantry.v1.TenantService/MoveTenant": "tenants.move",
    "/tenantry.v1.OperationService/GetOperation": "operations.get",
    "/tenantry.v1.OperationService/ListOperations": "operations.get",
    "/tenantry.v1.OperationService/WaitOperation": "operations.get",
    "/tenantry.v1.ProjectService/CreateProject": "projects.write",
    "/tenantry.v1.ProjectService/DeleteProject": "projects.write",
    "/tenantry.v1.ProjectService/GetProject": "projects.read",
    "/tenantry.v1.ProjectService/ListProjects": "projects.read",
}

TENANT = uuid.UUID("4c1f7a0e-9a53-4c47-8d3e-0a8f3c2b5e11")


def our_methods() -> dict[str, str]:
    """Every method of every service in every proto file of tenantry.v1, found
    through the descriptor pool, with the permission it declares ("" if none)."""
    methods: dict[str, str] = {}
    pool = descriptor_pool.Default()
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        importlib.import_module(f"tenantry.v1.{proto.stem}_pb2")
        file = pool.FindFileByName(f"tenantry/v1/{proto.name}")
        for service in file.services_by_name.values():
            for method in service.methods:
                declared: object = method.GetOptions().Extensions[options_pb2.permission]  # type: ignore[index]
                methods[f"/{service.full_name}/{method.name}"] = str(declared)
    return methods


def test_every_method_of_our_services_declares_a_known_permission() -> None:
    methods = our_methods()
    assert methods, "no services found in the descriptor pool"
    undeclared = sorted(name for name, permission in methods.items() if not permission)
    assert not undeclared, f"methods without (tenantry.v1.permission): {undeclared}"
    unknown = {name: permission for name, permission in methods.items() if permission not in PERMISSIONS}
    assert not unknown, f"methods declaring an unknown permission: {unknown}"


def test_permissions_match_the_design() -> None:
    methods = our_methods()
    for method, permission in EXPECTED.items():
        assert methods[method] == permission, method
        assert required_permission(method) == permission


def test_a_method_without_a_permission_is_refused_for_everybody() -> None:
    admin = Principal("root", frozenset({"tenantry.admin"}), None, time.time() + 60)
    for method in ("/tenantry.v1.TenantService/NoSuchMethod", "/other.v1.Service/Call", "garbage"):
        assert required_permission(method) is None
        with pytest.raises(ApiError) as caught:
            authorize(admin, method)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "PERMISSION_MISSING"


def test_authorize() -> None:
    reader = Principal("r", frozenset({"projects.read", "tenants.get"}), None, time.time() + 60)
    assert authorize(reader, "/tenantry.v1.ProjectService/GetProject") == "projects.read"
    with pytest.raises(ApiError) as caught:
        authorize(reader, "/tenantry.v1.ProjectService/CreateProject")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "PERMISSION_MISSING"
    assert caught.value.metadata == {"permission": "projects.write"}
    admin = Principal("a", frozenset({"tenantry.admin"}), None, time.time() + 60)
    for method, permission in EXPECTED.items():
        assert authorize(admin, method) == permission


def test_public_services_are_only_health_and_reflection() -> None:
    assert is_public("/grpc.health.v1.Health/Check")
    assert is_public("/grpc.health.v1.Health/Watch")
    assert is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert is_public("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    for method in EXPECTED:
        assert not is_public(method)
    assert not is_public("/grpc.health.v2.Health/Check")


def test_tenant_bound_tokens_name_only_their_tenant() -> None:
    bound = Principal("t", frozenset({"projects.read"}), TENANT, time.time() + 60)
    check_tenant(bound, str(TENANT), None)
    check_tenant(bound, str(TENANT).upper(), None)  # the gate admits this form too
    check_tenant(bound, str(TENANT), "some-slug")  # the id wins at the gate too
    check_tenant(bound, None, None)  # the tenant gate refuses this one (TENANT_REQUIRED)
    for id_header, slug_header in (
        (str(uuid.uuid4()), None),
        ("{" + str(TENANT) + "}", None),  # not a form the gate admits either
        ("not-a-uuid", None),
        (None, "acme"),
    ):
        with pytest.raises(ApiError) as caught:
            check_tenant(bound, id_header, slug_header)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "TENANT_NOT_PERMITTED"
    unbound = Principal("u", frozenset({"projects.read"}), None, time.time() + 60)
    check_tenant(unbound, str(uuid.uuid4()), None)
    check_tenant(unbound, None, "acme")
