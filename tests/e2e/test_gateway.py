"""Envoy: REST transcoding, errors as JSON google.rpc.Status, rejection of unknown paths and
parameters, body limits, CORS, gRPC and gRPC-Web on the same port."""

from __future__ import annotations

import asyncio
import struct

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.launcher.mesh import Mesh
from tests.e2e.helpers import register


async def test_healthz_answers_from_envoy(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200


async def test_unknown_rest_path_is_404_json(http: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/auth:teleport"),
        ("DELETE", "/v1/users"),
    ):
        response = await http.request(method, path)
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.json()["code"] == 5


async def test_unknown_query_parameter_is_400(http: httpx.AsyncClient) -> None:
    account = await register(http)
    response = await http.get("/v1/users?colour=blue", headers=account.headers)
    assert response.status_code == 400
    assert response.json()["code"] == 3


async def test_request_body_limit(mesh: Mesh) -> None:
    """A body above the limit is refused from its Content-Length, before it is sent."""
    host, port = mesh.gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/auth:login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5242880\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"413"


async def test_cors_preflight_for_the_dashboard(http: httpx.AsyncClient, mesh: Mesh) -> None:
    origin = mesh.gateway_url
    response = await http.options(
        "/v1/users/me",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    evil = await http.options(
        "/v1/users/me",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert evil.headers.get("access-control-allow-origin") != "https://evil.example"


async def test_dashboard_is_served(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert "EnergyMesh" in response.text


async def test_native_grpc_and_health_through_envoy(gateway_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(gateway_channel)
    response = await health.Check(
        health_pb2.HealthCheckRequest(service="energymesh.auth.v1.AuthService")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    jwks = await auth_pb2_grpc.AuthServiceStub(gateway_channel).GetJwks(auth_pb2.GetJwksRequest())
    assert jwks.keys
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth_pb2_grpc.AuthServiceStub(gateway_channel).GetCurrentUser(
            auth_pb2.GetCurrentUserRequest()
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_web_for_browsers(http: httpx.AsyncClient) -> None:
    message = auth_pb2.GetJwksRequest().SerializeToString()
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    response = await http.post(
        "/energymesh.auth.v1.AuthService/GetJwks",
        content=frame,
        headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
    )
    assert response.status_code == 200
    body = response.content
    assert body[0] == 0
    length = struct.unpack(">I", body[1:5])[0]
    assert auth_pb2.GetJwksResponse.FromString(body[5 : 5 + length]).keys
    assert b"grpc-status:0" in body[5 + length :].replace(b" ", b"")


async def test_server_reflection_lists_the_services(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.service_address("auth")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]))
        names = set()
        async for response in responses:
            names = {service.name for service in response.list_services_response.service}
    assert {"energymesh.auth.v1.AuthService", "grpc.health.v1.Health"} <= names


async def test_nul_characters_are_a_field_violation_not_a_crash(http: httpx.AsyncClient) -> None:
    account = await register(http)
    created = await http.post(
        "/v1/sites", headers=account.headers, json={"name": "a\u0000b", "timeZone": "Europe/Berlin"}
    )
    assert created.status_code == 400
    listed = await http.get("/v1/meters?query=a%00b", headers=account.headers)
    assert listed.status_code == 400
