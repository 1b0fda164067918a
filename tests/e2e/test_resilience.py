"""Health tells the truth about dependencies, and SIGTERM drains in-flight calls."""

from __future__ import annotations

import asyncio
import signal

import grpc
import httpx
import psycopg
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.launcher.mesh import Mesh
from tests.e2e.helpers import add_user, eventually, register

SERVICE = "energymesh.auth.v1.AuthService"


async def auth_health(mesh: Mesh) -> int:
    async with grpc.aio.insecure_channel(mesh.service_address("auth")) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(response.status)


async def test_health_follows_postgres(mesh: Mesh, http: httpx.AsyncClient) -> None:
    assert await auth_health(mesh) == health_pb2.HealthCheckResponse.SERVING
    mesh.stop_postgres()
    try:

        async def not_serving() -> bool:
            return bool(await auth_health(mesh) == health_pb2.HealthCheckResponse.NOT_SERVING)

        await eventually(not_serving)
    finally:
        mesh.start_postgres()

    async def serving() -> bool:
        return bool(await auth_health(mesh) == health_pb2.HealthCheckResponse.SERVING)

    await eventually(serving, wait_seconds=30)
    await register(http)  # and it works again


async def wait_for_lock_waiter(connection: psycopg.AsyncConnection[object]) -> None:
    async def waiting() -> bool:
        cursor = await connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'energymesh-auth' AND wait_event_type = 'Lock'"
        )
        row = await cursor.fetchone()
        return bool(row and row[0])  # type: ignore[index]

    await eventually(waiting)


async def test_sigterm_drains_an_in_flight_call(mesh: Mesh, http: httpx.AsyncClient) -> None:
    admin = await register(http)
    target = await add_user(http, admin, "ROLE_OPERATOR")
    blocker = await psycopg.AsyncConnection.connect(mesh.database_url, autocommit=False)
    watcher = await psycopg.AsyncConnection.connect(mesh.database_url, autocommit=True)
    try:
        # Hold the user's row so the update below is in flight when SIGTERM arrives.
        await blocker.execute(
            "SELECT 1 FROM auth.users WHERE id = %s FOR UPDATE", (target.user_id,)
        )
        async with grpc.aio.insecure_channel(mesh.service_address("auth")) as channel:
            update = asyncio.ensure_future(
                auth_pb2_grpc.AuthServiceStub(channel).UpdateUser(
                    auth_pb2.UpdateUserRequest(
                        user=auth_pb2.User(user_id=target.user_id, display_name="Drained"),
                        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                    ),
                    metadata=admin.metadata,
                )
            )
            await wait_for_lock_waiter(watcher)
            mesh.signal_service("auth", signal.SIGTERM)
            await asyncio.sleep(0.5)  # the server is draining; the call is still waiting
            assert not update.done()
            await blocker.commit()
            updated = await update
        assert updated.display_name == "Drained"
        assert await asyncio.to_thread(mesh.wait_service, "auth", 30) == 0
    finally:
        await blocker.close()
        await watcher.close()
        mesh.restart_service("auth")

    async def serving() -> bool:
        return bool(await auth_health(mesh) == health_pb2.HealthCheckResponse.SERVING)

    await eventually(serving, wait_seconds=30)
