"""POST /v1/meters:import: a CSV body in, one result per row out; dry runs, all-or-nothing,
malformed rows and documents, size limits, and the same over gRPC."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from google.api import httpbody_pb2

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from tests.e2e.device_steps import create_site, list_all_meters
from tests.e2e.helpers import Account, register, violations

HEADER = "serial_number,name,commodity,unit,register_type,expected_interval,labels"


def csv_of(rows: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def hundred_meters(prefix: str) -> bytes:
    return csv_of(
        [
            f"{prefix}-{i:03},Meter {i},electricity,kWh,cumulative,15m,floor={i % 4};zone=a"
            for i in range(100)
        ]
    )


async def import_csv(
    http: httpx.AsyncClient, account: Account, body: bytes, query: str = ""
) -> httpx.Response:
    return await http.post(
        f"/v1/meters:import?{query}",
        headers={**account.headers, "Content-Type": "text/csv"},
        content=body,
    )


def actions(body: dict[str, Any]) -> list[str]:
    return [result["action"].removeprefix("ACTION_") for result in body["results"]]


async def test_import_a_hundred_meters_then_update_them(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    response = await import_csv(http, admin, hundred_meters("IMP"), f"siteId={site['siteId']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["createdCount"], body["failedCount"], body["applied"]) == (100, 0, True)
    assert body["results"][0]["row"] == 2
    assert all(result["meterId"] for result in body["results"])

    meters = await list_all_meters(http, admin, f"siteId={site['siteId']}", page_size=30)
    assert len(meters) == 100
    first = next(meter for meter in meters if meter["serialNumber"] == "IMP-000")
    assert first["labels"] == {"floor": "0", "zone": "a"}
    assert first["expectedInterval"] == "900s"
    assert len(await list_all_meters(http, admin, "labels=floor%3D3")) == 25

    # Re-importing matches by serial number: changed rows update, the rest are unchanged.
    rows = [
        "IMP-000,Renamed,electricity,kWh,cumulative,1h,",
        "IMP-001,Meter 1,electricity,kWh,cumulative,15m,floor=1;zone=a",
        "IMP-002,Meter 2,gas,m3,cumulative,15m,",
    ]
    again = (await import_csv(http, admin, csv_of(rows))).json()
    assert actions(again) == ["UPDATED", "UNCHANGED", "FAILED"]
    assert again["results"][2]["errors"][0]["field"] == "commodity"
    renamed = (await http.get(f"/v1/meters/{first['meterId']}", headers=admin.headers)).json()
    # An empty cell leaves the field as it was.
    assert (renamed["name"], renamed["expectedInterval"], renamed["labels"]) == (
        "Renamed",
        "3600s",
        {"floor": "0", "zone": "a"},
    )


async def test_malformed_rows_are_reported_and_the_rest_imported(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    other = await register(http)
    foreign_site = await create_site(http, other)
    header = "site_id,serial_number,commodity,unit,register_type,multiplier,expected_interval"
    rows = [
        f"{site['siteId']},OK-1,electricity,kWh,cumulative,1,15m",  # line 2
        f"{site['siteId']},BAD-UNIT,water,kWh,cumulative,1,15m",  # 3
        f"{site['siteId']},BAD-NUM,electricity,kWh,cumulative,lots,15m",  # 4
        f"{site['siteId']},NEG,electricity,kWh,cumulative,-3,15m",  # 5
        f"{site['siteId']},,electricity,kWh,cumulative,1,15m",  # 6
        f"{site['siteId']},OK-1,electricity,kWh,cumulative,1,15m",  # 7: repeated serial
        f"{site['siteId']},SHORT,electricity",  # 8: too few cells
        f"{foreign_site['siteId']},FOREIGN,electricity,kWh,cumulative,1,15m",  # 9
        f"{site['siteId']},BAD-ENUM,plasma,kWh,sometimes,1,soon",  # 10
        f"{site['siteId']},OK-2,heat,MWh,interval,1,1h",  # 11
    ]
    response = await import_csv(http, admin, csv_of(rows, header))
    assert response.status_code == 200, response.text
    body = response.json()
    by_line = {result["row"]: result for result in body["results"]}

    def fields(line: int) -> set[str]:
        return {error["field"] for error in by_line[line]["errors"]}

    assert actions(body) == ["CREATED"] + ["FAILED"] * 8 + ["CREATED"]
    assert fields(3) == {"unit"}
    assert fields(4) == {"multiplier"}
    assert fields(5) == {"multiplier"}
    assert fields(6) == {"serial_number"}
    assert fields(7) == {"serial_number"}
    assert "row" in fields(8)
    assert fields(9) == {"site_id"}
    assert fields(10) == {"commodity", "register_type", "expected_interval"}
    assert (body["createdCount"], body["failedCount"]) == (2, 8)
    serials = {meter["serialNumber"] for meter in await list_all_meters(http, admin)}
    assert serials == {"OK-1", "OK-2"}
    # Nothing leaked into the other organization either.
    assert await list_all_meters(http, other) == []


async def test_all_or_nothing_and_validate_only_write_nothing(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    query = f"siteId={site['siteId']}"
    rows = [
        "AON-1,A,electricity,kWh,cumulative,15m,",
        "AON-2,B,electricity,furlongs,cumulative,15m,",
        "AON-3,C,electricity,kWh,cumulative,15m,bad label",
    ]
    refused = await import_csv(http, admin, csv_of(rows), f"{query}&allOrNothing=true")
    assert refused.status_code == 400, refused.text
    assert set(violations(refused)) == {"rows[3].unit", "rows[4].labels"}
    assert await list_all_meters(http, admin) == []

    dry = await import_csv(http, admin, csv_of(rows), f"{query}&validateOnly=true")
    assert dry.status_code == 200
    assert actions(dry.json()) == ["CREATED", "FAILED", "FAILED"]
    assert dry.json()["applied"] is False
    assert await list_all_meters(http, admin) == []

    good = await import_csv(
        http, admin, csv_of(rows[:1]), f"{query}&allOrNothing=true&validateOnly=true"
    )
    assert good.json()["createdCount"] == 1
    assert await list_all_meters(http, admin) == []


async def test_malformed_documents_are_invalid(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    query = f"siteId={site['siteId']}"
    cases: list[tuple[bytes, str, str]] = [
        (b"", "csv", "is empty"),
        (b"serial_number,colour\nA,red\n", "csv.header", "unknown column 'colour'"),
        (b"name,unit\nA,kWh\n", "csv.header", "serial_number column is required"),
        (b"serial_number\n", "csv", "no rows"),
        (b'serial_number,name\nA,"unterminated\n', "csv", "line"),
        (b"serial_number\n\xff\xfe\n", "csv", "not UTF-8"),
    ]
    for body, field, fragment in cases:
        response = await import_csv(http, admin, body, query)
        assert response.status_code == 400, (body, response.text)
        assert fragment in violations(response).get(field, ""), (body, response.text)
    missing_site = await import_csv(http, admin, csv_of(["NOSITE,n,gas,m3,cumulative,1h,"]))
    assert missing_site.json()["results"][0]["errors"][0]["field"] == "site_id"
    assert await list_all_meters(http, admin) == []


async def test_oversize_documents_are_refused(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    row = "X-{:07},{},electricity,kWh,cumulative,15m,\n"
    big = HEADER.encode() + b"\n" + "".join(row.format(i, "n" * 200) for i in range(11000)).encode()
    assert 2 * 1024 * 1024 < len(big) < 4 * 1024 * 1024
    too_big = await import_csv(http, admin, big, f"siteId={site['siteId']}")
    assert too_big.status_code == 400, too_big.text
    assert "at most 2097152" in violations(too_big)["csv"]
    many = HEADER.encode() + b"\n" + "".join(row.format(i, "") for i in range(10001)).encode()
    too_many = await import_csv(http, admin, many, f"siteId={site['siteId']}")
    assert too_many.status_code == 400, too_many.text
    assert "more than 10000 rows" in violations(too_many)["csv"]
    assert await list_all_meters(http, admin) == []


async def test_import_over_grpc(http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    stub = devices_pb2_grpc.DeviceServiceStub(gateway_channel)
    response = await stub.ImportMeters(
        devices_pb2.ImportMetersRequest(
            csv=httpbody_pb2.HttpBody(content_type="text/csv", data=hundred_meters("GRPC")),
            site_id=site["siteId"],
        ),
        metadata=admin.metadata,
    )
    assert response.created_count == 100
    assert response.results[99].action == devices_pb2.ImportMeterResult.ACTION_CREATED
    assert len(await list_all_meters(http, admin)) == 100
