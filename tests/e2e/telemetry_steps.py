"""Shared steps for the telemetry service's end-to-end tests: an organization with meters and
credentials, batches, streams and what the database holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import psycopg

from energymesh.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from services.launcher.mesh import Mesh
from tests.e2e.device_steps import create_meter, create_site
from tests.e2e.helpers import Account, register

Batch = telemetry_pb2.ReadingBatch
MINUTE_MS = 60_000


@dataclass
class Fleet:
    """An organization with a site, meters, an ingest key and a token for the first meter."""

    admin: Account
    site_id: str
    meter_ids: list[str]
    ingest_key: str
    meter_token: str
    meter_token_id: str

    def key_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.ingest_key}"),)

    def token_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.meter_token}"),)


async def fleet(http: httpx.AsyncClient, meters: int = 1, **meter_fields: str) -> Fleet:
    admin = await register(http)
    site = await create_site(http, admin)
    meter_ids = [
        (await create_meter(http, admin, site["siteId"], **meter_fields))["meterId"]
        for _ in range(meters)
    ]
    key = await http.post(
        "/v1/ingest-keys", headers=admin.headers, json={"displayName": "head-end"}
    )
    assert key.status_code == 200, key.text
    token = await http.post(
        f"/v1/meters/{meter_ids[0]}/tokens", headers=admin.headers, json={"displayName": "m"}
    )
    assert token.status_code == 200, token.text
    return Fleet(
        admin=admin,
        site_id=site["siteId"],
        meter_ids=meter_ids,
        ingest_key=key.json()["key"],
        meter_token=token.json()["token"],
        meter_token_id=token.json()["meterToken"]["tokenId"],
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def batch(
    meter_id: str, start_ms: int, count: int, *, value: float = 1.0, batch_id: str | None = None
) -> telemetry_pb2.ReadingBatch:
    """`count` readings a minute apart from start_ms, values value, value+1, ..."""
    return Batch(
        batch_id=batch_id if batch_id is not None else uuid.uuid4().hex,
        meter_id=meter_id,
        time_unix_ms=[start_ms + i * MINUTE_MS for i in range(count)],
        values=[value + i for i in range(count)],
    )


async def iterate(batches: Sequence[telemetry_pb2.ReadingBatch]) -> AsyncIterator[Batch]:
    for item in batches:
        yield item


def stub(channel: grpc.aio.Channel) -> Any:
    """The service's stub (typed Any: the generated stubs describe the synchronous API)."""
    return telemetry_pb2_grpc.TelemetryServiceStub(channel)


async def stream(
    channel: grpc.aio.Channel,
    batches: Sequence[telemetry_pb2.ReadingBatch],
    metadata: tuple[tuple[str, str], ...],
) -> telemetry_pb2.IngestSummary:
    summary: telemetry_pb2.IngestSummary = await stub(channel).StreamReadings(
        iterate(batches), metadata=metadata, timeout=60
    )
    return summary


async def stored(mesh: Mesh, meter_ids: Sequence[str]) -> int:
    """How many readings the database holds for these meters."""
    async with await psycopg.AsyncConnection.connect(mesh.database_url) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM telemetry.readings WHERE meter_id = ANY(%s::uuid[])",
            (list(meter_ids),),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def duplicate_keys(mesh: Mesh, meter_ids: Sequence[str]) -> int:
    async with await psycopg.AsyncConnection.connect(mesh.database_url) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM (SELECT meter_id, time FROM telemetry.readings "
            "WHERE meter_id = ANY(%s::uuid[]) GROUP BY 1, 2 HAVING count(*) > 1) d",
            (list(meter_ids),),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def rejected(summary: telemetry_pb2.IngestSummary | telemetry_pb2.BatchResult) -> dict[str, int]:
    return {
        telemetry_pb2.RejectReason.Name(count.reason).removeprefix("REJECT_REASON_"): count.count
        for count in summary.rejected
    }


async def ingest_status(mesh: Mesh, account: Account) -> telemetry_pb2.IngestStatus:
    async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as channel:
        status: telemetry_pb2.IngestStatus = await stub(channel).GetIngestStatus(
            telemetry_pb2.GetIngestStatusRequest(), metadata=account.metadata, timeout=10
        )
        return status
