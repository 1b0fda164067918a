"""Asks auth (over its public gRPC contract) whether a user id names a user of the caller's
organization, with the caller's own access token: auth answers NOT_FOUND for anyone else."""

from __future__ import annotations

import grpc

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.devices.domain import UserCheck
from services.kernel.context import current_trace
from services.kernel.errors import NotFound, Unavailable

TIMEOUT_SECONDS = 5.0


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
                if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise NotFound(
                        f"user {user_id} not found", metadata={"resource": "user"}
                    ) from None
                raise Unavailable(
                    f"could not check the user with auth ({error.code().name}); retry"
                ) from None

        return check

    async def close(self) -> None:
        await self._channel.close()
