"""Telemetry ingest against the real mesh: exactly-once storage, validation and quarantine,
malformed batches, credentials, the REST surface, CSV import, DST and events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from energymesh.telemetry.v1 import telemetry_pb2
from services.launcher.mesh import Mesh
from tests.e2e.helpers import add_user, find_event, violations
from tests.e2e.telemetry_steps import (
    MINUTE_MS,
    batch,
    fleet,
    iterate,
    now_ms,
    rejected,
    stored,
    stream,
    stub,
)

DAY_MS = 86_400_000


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as opened:
        yield opened


def error_info(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    return {}


async def test_replaying_batches_three_times_stores_nothing_new(
    mesh: Mesh, http: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    f = await fleet(http, meters=3)
    start = now_ms() - 10 * DAY_MS
    batches = [
        batch(meter, start + i * 1000 * MINUTE_MS, 1000, batch_id=f"{meter}-{i}")
        for meter in f.meter_ids
        for i in range(4)
    ]
    first = await stream(channel, batches, f.key_metadata())
    assert (first.accepted, first.duplicates, first.replayed_batches) == (12_000, 0, 0)
    for _ in range(3):
        again = await stream(channel, batches, f.key_metadata())
        assert again.replayed_batches == 12
        assert again.accepted == 12_000  # the original result, not a new write
        assert [r.replayed for r in again.batch_results] == [True] * 12
    assert await stored(mesh, f.meter_ids) == 12_000
    # The same readings under new batch ids: duplicates, still nothing new.
    renamed = [batch(b.meter_id, b.time_unix_ms[0], 1000, batch_id="") for b in batches]
    fresh = await stream(channel, renamed, f.key_metadata())
    assert (fresh.accepted, fresh.duplicates) == (0, 12_000)
    assert await stored(mesh, f.meter_ids) == 12_000


async def test_first_write_wins_and_conflicts_are_quarantined(
    http: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    f = await fleet(http)
    meter = f.meter_ids[0]
    start = now_ms() - DAY_MS
    await stream(channel, [batch(meter, start, 3, value=10)], f.token_metadata())
    # Same times: 10 (duplicate), 99 (conflict), 12 (duplicate); one new time; and a
    # reading repeated inside the batch with another value (conflict with the first).
    mixed = telemetry_pb2.ReadingBatch(
        batch_id="mixed",
        time_unix_ms=[start + i * MINUTE_MS for i in (0, 1, 2, 3, 3)],
        values=[10, 99, 12, 13, 14],
    )
    summary = await stream(channel, [mixed], f.token_metadata())
    assert (summary.accepted, summary.duplicates) == (1, 2)
    assert rejected(summary) == {"CONFLICT": 2}
    response = await http.get(f"/v1/meters/{meter}/rejectedReadings", headers=f.admin.headers)
    quarantined = response.json()["rejectedReadings"]
    assert {(r["value"], r["storedValue"]) for r in quarantined} == {(99, 11), (14, 13)}
    assert {r["reason"] for r in quarantined} == {"REJECT_REASON_CONFLICT"}
    readings = await http.get(
        f"/v1/meters/{meter}/readings", params={"pageSize": 2}, headers=f.admin.headers
    )
    page = readings.json()
    assert [r["value"] for r in page["readings"]] == [10, 11]
    rest = await http.get(
        f"/v1/meters/{meter}/readings",
        params={"pageSize": 2, "pageToken": page["nextPageToken"]},
        headers=f.admin.headers,
    )
    assert [r["value"] for r in rest.json()["readings"]] == [12, 13]
    assert rest.json()["nextPageToken"] == ""


async def test_invalid_readings_are_quarantined_and_the_rest_stored(
    http: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    f = await fleet(http, rolloverValue="100000")  # a cumulative kWh register
    now = now_ms()
    readings = telemetry_pb2.ReadingBatch(
        batch_id="v",
        time_unix_ms=[
            *(now - 1000, now - 2000, now + 3_600_000, now - 40 * 365 * DAY_MS),
            *(now - 3000, now - 4000, now - 5000),
        ],
        values=[1.0, float("nan"), 2.0, 3.0, -5.0, 200_000.0, 4.0],
    )
    await asyncio.sleep(0.5)  # the meter's created event tells telemetry its register
    summary = await stream(channel, [readings], f.token_metadata())
    assert summary.accepted == 2
    assert rejected(summary) == {
        "NOT_FINITE": 1,
        "IN_FUTURE": 1,
        "TOO_OLD": 1,
        "NEGATIVE_COUNTER": 1,
        "IMPLAUSIBLE": 1,
    }
    response = await http.get(
        f"/v1/meters/{f.meter_ids[0]}/rejectedReadings", headers=f.admin.headers
    )
    assert len(response.json()["rejectedReadings"]) == 5


async def test_malformed_batches_are_refused_whole_naming_the_batch(
    mesh: Mesh, http: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    f = await fleet(http)
    meter, start = f.meter_ids[0], now_ms() - DAY_MS
    good = batch(meter, start, 10, batch_id="good")
    uneven = telemetry_pb2.ReadingBatch(batch_id="uneven", time_unix_ms=[start], values=[])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(channel, [good, uneven], f.token_metadata())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error.value) == {"batch_id": "uneven", "batch_index": "1"}
    assert await stored(mesh, [meter]) == 10  # the batch before it was committed

    too_many = batch(meter, start, 10_001, batch_id="too-many")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(channel, [too_many], f.token_metadata())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error.value)["batch_id"] == "too-many"

    # Over 4 MiB with a single reading: an unknown field (1023) the server must still receive.
    padding = b"\xfa\x3f" + _varint(5 * 2**20) + b"x" * (5 * 2**20)
    huge = telemetry_pb2.ReadingBatch.FromString(
        batch(meter, start, 1, batch_id="huge").SerializeToString() + padding
    )
    call: Any = stub(channel).StreamReadings(metadata=f.token_metadata())
    await call.write(huge)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error.value)["batch_id"] == "huge"

    # SyncReadings acknowledges the bad batch with its status and goes on.
    sync: Any = stub(channel).SyncReadings(metadata=f.token_metadata())
    await sync.write(uneven)
    await sync.write(batch(meter, start + DAY_MS // 2, 5, batch_id="after"))
    await sync.done_writing()
    acks = [ack.result async for ack in sync]
    assert [(a.batch_id, a.status.code, a.accepted) for a in acks] == [
        ("uneven", grpc.StatusCode.INVALID_ARGUMENT.value[0], 0),
        ("after", 0, 5),
    ]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


async def test_credentials_and_tenancy(
    http: httpx.AsyncClient, channel: grpc.aio.Channel, gateway_channel: grpc.aio.Channel
) -> None:
    f = await fleet(http, meters=2)
    other = await fleet(http)
    start = now_ms() - DAY_MS
    codes = []
    for credential, meter in [
        ("emt_notatoken_x", f.meter_ids[0]),  # unknown credential
        ("not-even-a-jwt", f.meter_ids[0]),
        (f.meter_token, f.meter_ids[1]),  # a meter token writes its own meter only
        (f.ingest_key, other.meter_ids[0]),  # another organization's meter
        (f.admin.access_token, other.meter_ids[0]),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream(
                channel,
                [batch(meter, start, 1)],
                (("authorization", f"Bearer {credential}"),),
            )
        codes.append(error.value.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [grpc.StatusCode.NOT_FOUND] * 3

    viewer = await add_user(http, f.admin, "ROLE_VIEWER")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(channel, [batch(f.meter_ids[0], start, 1)], viewer.metadata)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    operator = await add_user(http, f.admin, "ROLE_OPERATOR")
    summary = await stream(gateway_channel, [batch(f.meter_ids[0], start, 2)], operator.metadata)
    assert summary.accepted == 2
    # A viewer reads only assigned meters: another org's meter is NOT_FOUND, never 403.
    response = await http.get(
        f"/v1/meters/{other.meter_ids[0]}/readings:latest", headers=f.admin.headers
    )
    assert response.status_code == 404


async def test_revoked_token_stops_an_open_stream_at_its_next_batch(
    http: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    f = await fleet(http)
    meter, start = f.meter_ids[0], now_ms() - DAY_MS
    call: Any = stub(channel).SyncReadings(metadata=f.token_metadata())
    await call.write(batch(meter, start, 5, batch_id="before"))
    ack = await call.read()
    assert isinstance(ack, telemetry_pb2.BatchAck)
    assert ack.result.accepted == 5
    response = await http.delete(
        f"/v1/meters/{meter}/tokens/{f.meter_token_id}", headers=f.admin.headers
    )
    assert response.status_code == 200
    code = None
    for i in range(50):  # the revocation event reaches telemetry within moments
        try:
            await call.write(batch(meter, start + (i + 1) * DAY_MS // 100, 1))
            answer = await call.read()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            break
        if answer is grpc.aio.EOF:
            code = await call.code()
            break
        await asyncio.sleep(0.1)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream(channel, [batch(meter, start, 1)], f.token_metadata())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rest_write_latest_and_downsampled_readings(http: httpx.AsyncClient) -> None:
    f = await fleet(http)
    meter, start = f.meter_ids[0], now_ms() - 2 * DAY_MS
    body = {
        "batchId": "manual-1",
        "timeUnixMs": [start + i * MINUTE_MS for i in range(2000)],
        "values": [float(i % 100) for i in range(2000)],
    }
    url = f"/v1/meters/{meter}/readings:batchCreate"
    response = await http.post(url, headers=f.admin.headers, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == "2000"
    again = await http.post(url, headers=f.admin.headers, json=body)
    assert again.json()["replayedBatches"] == "1"
    bad = await http.post(url, headers=f.admin.headers, json={"timeUnixMs": [1], "values": []})
    assert bad.status_code == 400
    assert "batches[0].values" in violations(bad)
    latest = await http.get(f"/v1/meters/{meter}/readings:latest", headers=f.admin.headers)
    assert latest.json()["timeUnixMs"] == str(start + 1999 * MINUTE_MS)
    chart = await http.get(
        f"/v1/meters/{meter}/readings", params={"maxPoints": 50}, headers=f.admin.headers
    )
    points = chart.json()
    assert len(points["readings"]) == 50
    assert points["totalReadings"] == "2000"
    assert points["readings"][0]["timeUnixMs"] == str(start)
    assert max(r["value"] for r in points["readings"]) == 99
    window = await http.get(
        f"/v1/meters/{meter}/readings",
        params={
            "startTime": datetime.fromtimestamp((start + 10 * MINUTE_MS) / 1000)
            .astimezone()
            .isoformat(),
            "endTime": datetime.fromtimestamp((start + 20 * MINUTE_MS) / 1000)
            .astimezone()
            .isoformat(),
        },
        headers=f.admin.headers,
    )
    assert len(window.json()["readings"]) == 10
    missing = await http.get(f"/v1/meters/{uuid.uuid4()}/readings:latest", headers=f.admin.headers)
    assert missing.status_code == 404


async def test_dst_autumn_change_stores_both_half_past_two(http: httpx.AsyncClient) -> None:
    """Europe/Berlin leaves summer time on 2026-10-25: 02:30 happens twice (CEST, then CET)."""
    f = await fleet(http)
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin, fold=0)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=berlin, fold=1)
    assert second.timestamp() - first.timestamp() == 3600
    csv = (
        "time,value\n"
        f"{first.isoformat()},1.5\n"  # 2026-10-25T02:30:00+02:00
        f"{second.isoformat()},2.5\n"  # 2026-10-25T02:30:00+01:00
    )
    response = await http.post(
        f"/v1/readings:import?meterId={f.meter_ids[0]}",
        headers={**f.admin.headers, "Content-Type": "text/csv"},
        content=csv,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == "2"
    readings = await http.get(f"/v1/meters/{f.meter_ids[0]}/readings", headers=f.admin.headers)
    assert [(r["time"], r["value"]) for r in readings.json()["readings"]] == [
        ("2026-10-25T00:30:00Z", 1.5),
        ("2026-10-25T01:30:00Z", 2.5),
    ]


async def test_csv_import_by_serial_number_is_idempotent(http: httpx.AsyncClient) -> None:
    f = await fleet(http, meters=2)
    meters = [
        (await http.get(f"/v1/meters/{meter}", headers=f.admin.headers)).json()
        for meter in f.meter_ids
    ]
    start = now_ms() - 3 * DAY_MS
    lines = ["meter,time,value"] + [
        f"{meter['serialNumber']},{start + i * MINUTE_MS},{i}"
        for meter in meters
        for i in range(50)
    ]
    document = "\n".join(lines) + "\n"
    headers = {**f.admin.headers, "Content-Type": "text/csv"}
    first = await http.post("/v1/readings:import", headers=headers, content=document)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == "100"
    second = await http.post("/v1/readings:import", headers=headers, content=document)
    assert second.json()["replayedBatches"] == "2"
    broken = await http.post(
        "/v1/readings:import", headers=headers, content="meter,time,value\nx,yesterday,1\n"
    )
    assert broken.status_code == 400
    assert "rows[2].time" in violations(broken)


async def test_committed_readings_are_announced(
    http: httpx.AsyncClient, channel: grpc.aio.Channel, nats_client: Client
) -> None:
    f = await fleet(http)
    meter, start = f.meter_ids[0], now_ms() - DAY_MS
    await stream(channel, [batch(meter, start, 30, batch_id="announced")], f.token_metadata())
    event = await find_event(
        nats_client, "telemetry.readings.committed", lambda e: e.get("meterId") == meter
    )
    assert event["organizationId"] == f.admin.organization_id
    assert event["count"] == 30
    assert event["batchIds"] == ["announced"]
    assert event["firstTime"] < event["lastTime"]

    async def last_seen() -> bool:
        got = await http.get(f"/v1/meters/{meter}", headers=f.admin.headers)
        return bool(got.json().get("lastSeenTime"))

    for _ in range(100):
        if await last_seen():
            break
        await asyncio.sleep(0.1)
    assert await last_seen()


async def test_iterate_helper_is_lazy() -> None:
    # The helper used above must not pre-read: streams depend on it.
    seen = [item async for item in iterate([])]
    assert seen == []
