"""Asks auth (over its public gRPC contract) whether a user id names a user of the caller's
organization, with the caller's own access token: auth answers NOT_FOUND for anyone else.

Auth's answer about the caller is passed on as it is: UNAUTHENTICATED (the token was revoked
meanwhile, say) and PERMISSION_DENIED are not worth retrying. Only a failure to reach auth is
UNAVAILABLE; any other answer is unexpected (INTERNAL, logged)."""

from __future__ import annotations

import grpc

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.devices.domain import UserCheck
from services.kernel.context import current_trace
from services.kernel.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable

TIMEOUT_SECONDS = 5.0
# What a call that never got an answer from auth ends with.
TRANSPORT_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class AuthUsers:
    def __init__(self, auth_address: str) -> None:
        self._channel = grpc.aio.insecure_channel(auth_address)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)

    def checker(self, authorization: str) -> UserCheck:
        """A check made on behalf of the caller who presented `authorization`."""

        async def check(user_id: str) -> None:
            metadata = [("authorization", authorization)]
            trace = current_trace.get()
            if trace is not None:
                metadata.append(("traceparent", trace.traceparent))
            try:
                await self._stub.GetUser(
                    auth_pb2.GetUserRequest(user_id=user_id),
                    metadata=metadata,
                    timeout=TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise NotFound(
                        f"user {user_id} not found", metadata={"resource": "user"}
                    ) from None
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise Unauthenticated(
                        f"auth refused the access token: {error.details()}"
                    ) from None
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    raise PermissionDenied(
                        f"auth refused to show the user: {error.details()}"
                    ) from None
                if code in TRANSPORT_FAILURES:
                    raise Unavailable(
                        f"could not check the user with auth ({code.name}); retry"
                    ) from None
                raise RuntimeError(
                    f"auth answered GetUser with {code.name}: {error.details()}"
                ) from error

        return check

    async def close(self) -> None:
        await self._channel.close()
