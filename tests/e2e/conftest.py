"""The real mesh, started once per test session on free ports with a temporary data dir:
PostgreSQL, nats-server, every service and Envoy, through the same launcher as `make run`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import nats
import pytest
from nats.aio.client import Client
from services.launcher.mesh import Mesh, MeshConfig


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    data_dir: Path = tmp_path_factory.mktemp("energymesh")
    running = Mesh(MeshConfig.for_tests(data_dir))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def loopback_address() -> str:
    """A fresh 127.x.y.z source address: each test is its own client to Envoy, so per-address
    login throttling in one test does not leak into another."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def gateway_client(mesh: Mesh, source_address: str | None = None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source_address or loopback_address())
    return httpx.AsyncClient(base_url=mesh.gateway_url, timeout=30, transport=transport)


@pytest.fixture
async def http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(mesh) as client:
        yield client


@pytest.fixture(scope="session")
async def gateway_channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    """Native gRPC through Envoy, as SDKs and meters use it."""
    address = mesh.gateway_url.removeprefix("http://")
    async with grpc.aio.insecure_channel(address) as channel:
        yield channel


@pytest.fixture(scope="session")
async def auth_channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    """Straight to the auth service, bypassing Envoy."""
    async with grpc.aio.insecure_channel(mesh.service_address("auth")) as channel:
        yield channel


@pytest.fixture(scope="session")
async def nats_client(mesh: Mesh) -> AsyncIterator[Client]:
    client = await nats.connect(mesh.nats_url)
    try:
        yield client
    finally:
        await client.drain()


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return asyncio.DefaultEventLoopPolicy()
