"""The auth service's permission matrix: every RPC (enumerated from the descriptor, so a new
RPC without a row fails here) by every kind of caller, over native gRPC through Envoy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.e2e.helpers import Account, add_user, register, unique_email

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CALLERS = ("anonymous", "other_admin", "viewer", "operator", "manager", "admin")


@dataclass
class World:
    accounts: dict[str, Account]
    target: Account  # a viewer of the first organization whom others act on
    http: httpx.AsyncClient


Metadata = tuple[tuple[str, str], ...]
Call = Callable[["auth_pb2_grpc.AuthServiceAsyncStub", World, Metadata], Awaitable[object]]


async def fresh_user(world: World) -> str:
    victim = await add_user(world.http, world.accounts["admin"], "ROLE_VIEWER")
    return victim.user_id


# RPC → (how to call it, expected code for each caller in CALLERS order).
# Public RPCs are called with empty input: anyone gets INVALID_ARGUMENT, never UNAUTHENTICATED.
MATRIX: dict[str, tuple[Call, tuple[grpc.StatusCode, ...]]] = {
    "Register": (
        lambda s, w, m: s.Register(auth_pb2.RegisterRequest(), metadata=m),
        (INVALID,) * 6,
    ),
    "Login": (lambda s, w, m: s.Login(auth_pb2.LoginRequest(), metadata=m), (INVALID,) * 6),
    "RefreshToken": (
        lambda s, w, m: s.RefreshToken(auth_pb2.RefreshTokenRequest(), metadata=m),
        (INVALID,) * 6,
    ),
    "Logout": (lambda s, w, m: s.Logout(auth_pb2.LogoutRequest(), metadata=m), (INVALID,) * 6),
    "RequestPasswordReset": (
        lambda s, w, m: s.RequestPasswordReset(auth_pb2.RequestPasswordResetRequest(), metadata=m),
        (INVALID,) * 6,
    ),
    "ResetPassword": (
        lambda s, w, m: s.ResetPassword(auth_pb2.ResetPasswordRequest(), metadata=m),
        (INVALID,) * 6,
    ),
    "VerifyEmail": (
        lambda s, w, m: s.VerifyEmail(auth_pb2.VerifyEmailRequest(), metadata=m),
        (INVALID,) * 6,
    ),
    "GetJwks": (lambda s, w, m: s.GetJwks(auth_pb2.GetJwksRequest(), metadata=m), (OK,) * 6),
    "GetCurrentUser": (
        lambda s, w, m: s.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=m),
        (UNAUTHENTICATED, OK, OK, OK, OK, OK),
    ),
    "GetUser": (
        lambda s, w, m: s.GetUser(
            auth_pb2.GetUserRequest(user_id=w.accounts["operator"].user_id), metadata=m
        ),
        (UNAUTHENTICATED, NOT_FOUND, DENIED, OK, OK, OK),
    ),
    "ListUsers": (
        lambda s, w, m: s.ListUsers(auth_pb2.ListUsersRequest(), metadata=m),
        (UNAUTHENTICATED, OK, DENIED, DENIED, DENIED, OK),
    ),
    "CreateUser": (
        lambda s, w, m: s.CreateUser(
            auth_pb2.CreateUserRequest(
                user=auth_pb2.User(
                    email=unique_email(), display_name="New", role=auth_pb2.ROLE_VIEWER
                )
            ),
            metadata=m,
        ),
        (UNAUTHENTICATED, OK, DENIED, DENIED, DENIED, OK),
    ),
    "UpdateUser": (
        lambda s, w, m: s.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(user_id=w.target.user_id, display_name="Renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=m,
        ),
        (UNAUTHENTICATED, NOT_FOUND, DENIED, DENIED, DENIED, OK),
    ),
    "DeleteUser": (
        lambda s, w, m: _delete_fresh(s, w, m),
        (UNAUTHENTICATED, NOT_FOUND, DENIED, DENIED, DENIED, OK),
    ),
    "ListAuditEvents": (
        lambda s, w, m: s.ListAuditEvents(auth_pb2.ListAuditEventsRequest(), metadata=m),
        (UNAUTHENTICATED, OK, DENIED, DENIED, DENIED, OK),
    ),
}


async def _delete_fresh(
    stub: auth_pb2_grpc.AuthServiceAsyncStub, world: World, metadata: Metadata
) -> object:
    user_id = await fresh_user(world)
    return await stub.DeleteUser(auth_pb2.DeleteUserRequest(user_id=user_id), metadata=metadata)


def test_every_rpc_has_a_row() -> None:
    methods = {m.name for m in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods}
    assert set(MATRIX) == methods


@pytest.fixture
async def world(http: httpx.AsyncClient) -> World:
    admin = await register(http, "Matrix Org")
    other = await register(http, "Other Org")
    accounts = {"admin": admin, "other_admin": other}
    for role in ("viewer", "operator", "manager"):
        accounts[role] = await add_user(http, admin, f"ROLE_{role.upper()}")
    target = await add_user(http, admin, "ROLE_VIEWER")
    return World(accounts, target, http)


@pytest.mark.parametrize("method", sorted(MATRIX))
async def test_permission_matrix(
    method: str, world: World, gateway_channel: grpc.aio.Channel
) -> None:
    call, expected = MATRIX[method]
    stub = auth_pb2_grpc.AuthServiceStub(gateway_channel)
    for caller, code in zip(CALLERS, expected, strict=True):
        token = "" if caller == "anonymous" else world.accounts[caller].access_token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            await call(stub, world, metadata)
            actual = OK
        except grpc.aio.AioRpcError as error:
            actual = error.code()
        assert actual == code, f"{method} as {caller}: expected {code.name}, got {actual.name}"
