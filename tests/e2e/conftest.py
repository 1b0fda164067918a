"""The real mesh, started once per test session on free ports with a temporary data dir:
PostgreSQL, nats-server, every service and Envoy, through the same launcher as `make run`."""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import grpc
import httpx
import nats
import pytest
from nats.aio.client import Client

from services.launcher.discovery import discover_services
from services.launcher.mesh import Mesh, MeshConfig


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    # Not pytest's tmp_path: each pytest start makes /tmp/pytest-of-<user> private (0700),
    # which would lock out the unprivileged user PostgreSQL runs as.
    data_dir = Path(tempfile.mkdtemp(prefix="energymesh-test-"))
    running = Mesh(MeshConfig.for_tests(data_dir))
    running.start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the tail of every mesh component's log to the report."""
    report = yield
    mesh: Mesh | None = getattr(item, "funcargs", {}).get("mesh")
    if report.failed and mesh is not None:
        names = [info.name for info in discover_services()] + ["envoy"]
        for name in names:
            with contextlib.suppress(Exception):
                report.sections.append((f"{name} log", "\n".join(mesh.logs(name)[-15:])))
    return report
