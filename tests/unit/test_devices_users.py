"""How the devices service passes on auth's answer when it checks a user for an assignment:
auth's verdict about the caller as it is, UNAVAILABLE only when auth could not be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.devices.users import AuthUsers
from services.kernel.errors import (
    DomainError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

USER_ID = "7b0e2a52-4f7c-4a57-9d0e-6a3f0c6f1a11"


class FailingStub:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def GetUser(self, request: object, **kwargs: object) -> object:
        raise grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="auth says no"
        )


@pytest.fixture
async def users() -> AsyncIterator[AuthUsers]:
    client = AuthUsers("127.0.0.1:1")
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, NotFound),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
    ],
)
async def test_auth_answers_are_passed_on(
    users: AuthUsers, code: grpc.StatusCode, expected: type[DomainError]
) -> None:
    users._stub = FailingStub(code)  # type: ignore[assignment]
    with pytest.raises(DomainError) as raised:
        await users.checker("Bearer token")(USER_ID)
    assert type(raised.value) is expected
    if expected in (Unauthenticated, PermissionDenied):
        assert "auth says no" in raised.value.message


async def test_an_unexpected_answer_is_an_internal_error(users: AuthUsers) -> None:
    users._stub = FailingStub(grpc.StatusCode.INTERNAL)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="INTERNAL"):
        await users.checker("Bearer token")(USER_ID)


async def test_an_unreachable_auth_is_unavailable(users: AuthUsers) -> None:
    with pytest.raises(Unavailable):
        await users.checker("Bearer token")(USER_ID)
