"""Sites and meters through REST (and gRPC where it matters): validation with field details,
nothing half-written, etags, decommissioning, filters and pagination under concurrent inserts."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from tests.e2e.device_steps import (
    create_meter,
    create_site,
    list_all_meters,
    meter_body,
    unique_serial,
)
from tests.e2e.helpers import error_reason, register, violations


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"timeZone": "Europe/Berlinn"}, "site.time_zone", "not an IANA time zone"),
        ({"timeZone": ""}, "site.time_zone", "is required"),
        ({"name": " "}, "site.name", "is required"),
        ({"name": "x" * 201}, "site.name", "at most 200"),
        ({"latitude": 52.5}, "site.longitude", "set together"),
        ({"latitude": 95, "longitude": 13.4}, "site.latitude", "between -90 and 90"),
        ({"latitude": 52.5, "longitude": 190}, "site.longitude", "between -180 and 180"),
        ({"labels": {"Bad Key": "x"}}, "site.labels[Bad Key]", "key must be"),
        ({"address": "a" * 501}, "site.address", "at most 500"),
    ],
)
async def test_bad_site_fields_are_invalid_with_details(
    http: httpx.AsyncClient, fields: dict[str, Any], field: str, fragment: str
) -> None:
    admin = await register(http)
    body = {"name": "HQ", "timeZone": "Europe/Berlin", **fields}
    response = await http.post("/v1/sites", headers=admin.headers, json=body)
    assert response.status_code == 400, response.text
    assert error_reason(response) == "ERROR_REASON_INVALID_ARGUMENT"
    assert fragment in violations(response)[field]
    listed = await http.get("/v1/sites", headers=admin.headers)
    assert listed.json()["sites"] == []


METER_CASES = [
    ({"commodity": "COMMODITY_WATER", "unit": "kWh"}, "meter.unit", "does not suit"),
    ({"unit": "m3"}, "meter.unit", "does not suit a cumulative electricity"),
    ({"unit": "kW"}, "meter.unit", "does not suit"),
    ({"unit": "furlongs"}, "meter.unit", "not a known unit"),
    ({"unit": ""}, "meter.unit", "is required"),
    ({"multiplier": -2}, "meter.multiplier", "greater than 0"),
    ({"multiplier": 0}, "meter.multiplier", "greater than 0"),
    ({"multiplier": 2e6}, "meter.multiplier", "at most"),
    ({"rolloverValue": -1}, "meter.rollover_value", "greater than 0"),
    (
        {"registerType": "REGISTER_TYPE_INTERVAL", "rolloverValue": 99999},
        "meter.rollover_value",
        "only to cumulative",
    ),
    ({"expectedInterval": "0.5s"}, "meter.expected_interval", "whole seconds"),
    ({"expectedInterval": "0s"}, "meter.expected_interval", "whole seconds from 1"),
    ({"expectedInterval": "172800s"}, "meter.expected_interval", "to 1 day"),
    ({"serialNumber": "has space"}, "meter.serial_number", "without spaces"),
    ({"serialNumber": ""}, "meter.serial_number", "is required"),
    ({"commodity": "COMMODITY_UNSPECIFIED"}, "meter.commodity", "is required"),
    ({"registerType": "REGISTER_TYPE_UNSPECIFIED"}, "meter.register_type", "is required"),
    ({"state": "METER_STATE_DECOMMISSIONED"}, "meter.state", "deleting"),
    ({"labels": {"floor": "x" * 64}}, "meter.labels[floor]", "at most 63"),
    ({"siteId": ""}, "meter.site_id", "is required"),
]


@pytest.mark.parametrize(("fields", "field", "fragment"), METER_CASES)
async def test_bad_meter_fields_are_invalid_with_details(
    http: httpx.AsyncClient, fields: dict[str, Any], field: str, fragment: str
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    body = meter_body(site["siteId"], **fields)
    response = await http.post("/v1/meters", headers=admin.headers, json=body)
    assert response.status_code == 400, response.text
    assert fragment in violations(response)[field], violations(response)
    assert await list_all_meters(http, admin, "showDecommissioned=true") == []


async def test_all_problems_are_reported_at_once(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    body = meter_body(site["siteId"], unit="L", multiplier=-1, serialNumber="")
    response = await http.post("/v1/meters", headers=admin.headers, json=body)
    assert set(violations(response)) == {"meter.unit", "meter.multiplier", "meter.serial_number"}


async def test_duplicate_serial_is_already_exists_and_frees_on_decommission(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    first = await create_meter(http, admin, site["siteId"], serialNumber="DUP-1")
    again = await http.post(
        "/v1/meters", headers=admin.headers, json=meter_body(site["siteId"], serialNumber="DUP-1")
    )
    assert again.status_code == 409, again.text
    assert error_reason(again) == "ERROR_REASON_ALREADY_EXISTS"
    assert "meter.serial_number" in violations(again)
    assert len(await list_all_meters(http, admin)) == 1
    # Another organization may use the same serial number.
    other = await register(http)
    other_site = await create_site(http, other)
    await create_meter(http, other, other_site["siteId"], serialNumber="DUP-1")
    # A decommissioned meter frees its serial number for the replacement.
    deleted = await http.delete(f"/v1/meters/{first['meterId']}", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text
    await create_meter(http, admin, site["siteId"], serialNumber="DUP-1")


async def test_meters_on_another_organizations_site_are_not_found(
    http: httpx.AsyncClient,
) -> None:
    admin, intruder = await register(http), await register(http)
    site = await create_site(http, admin)
    response = await http.post(
        "/v1/meters", headers=intruder.headers, json=meter_body(site["siteId"])
    )
    assert response.status_code == 404, response.text
    for path in (f"/v1/sites/{site['siteId']}", "/v1/sites/not-a-uuid", "/v1/meters/nope"):
        assert (await http.get(path, headers=intruder.headers)).status_code == 404


async def test_update_meter_with_mask_and_etag(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    other_site = await create_site(http, admin, name="Annex")
    meter = await create_meter(http, admin, site["siteId"], labels={"floor": "1"})
    url = f"/v1/meters/{meter['meterId']}"

    first = await http.patch(
        f"{url}?updateMask=name,labels,siteId,multiplier",
        headers=admin.headers,
        json={
            "name": "Renamed",
            "labels": {"floor": "2"},
            "siteId": other_site["siteId"],
            "multiplier": 40,
            "etag": meter["etag"],
        },
    )
    assert first.status_code == 200, first.text
    updated = first.json()
    assert (updated["name"], updated["labels"], updated["multiplier"]) == (
        "Renamed",
        {"floor": "2"},
        40,
    )
    assert updated["siteId"] == other_site["siteId"]
    assert updated["etag"] != meter["etag"]

    # A second writer who read the meter before the first write loses, REST and gRPC alike.
    stale = await http.patch(
        f"{url}?updateMask=name",
        headers=admin.headers,
        json={"name": "Lost", "etag": meter["etag"]},
    )
    assert stale.status_code == 409, stale.text
    assert error_reason(stale) == "ERROR_REASON_ABORTED"
    stub = devices_pb2_grpc.DeviceServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        await stub.UpdateMeter(
            devices_pb2.UpdateMeterRequest(
                meter=devices_pb2.Meter(meter_id=meter["meterId"], name="Lost", etag=meter["etag"]),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=admin.metadata,
        )
    assert aborted.value.code() == grpc.StatusCode.ABORTED
    assert (await http.get(url, headers=admin.headers)).json()["name"] == "Renamed"

    # Clearing an optional field through the mask; immutable fields cannot change.
    cleared = await http.patch(f"{url}?updateMask=multiplier", headers=admin.headers, json={})
    assert cleared.json()["multiplier"] == 1
    immutable = await http.patch(
        f"{url}?updateMask=unit", headers=admin.headers, json={"unit": "MWh"}
    )
    assert immutable.status_code == 400
    assert "meter.unit" in violations(immutable)
    unknown = await http.patch(
        f"{url}?updateMask=lastSeenTime", headers=admin.headers, json={"name": "x"}
    )
    assert "update_mask" in violations(unknown)


async def test_update_site_with_etag(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin, latitude=52.52, longitude=13.4)
    url = f"/v1/sites/{site['siteId']}"
    moved = await http.patch(
        f"{url}?updateMask=timeZone,latitude,longitude",
        headers=admin.headers,
        json={"timeZone": "Europe/Lisbon", "etag": site["etag"]},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["timeZone"] == "Europe/Lisbon"
    assert "latitude" not in moved.json()
    stale = await http.patch(
        f"{url}?updateMask=name", headers=admin.headers, json={"name": "X", "etag": site["etag"]}
    )
    assert stale.status_code == 409
    bad = await http.patch(
        f"{url}?updateMask=timeZone", headers=admin.headers, json={"timeZone": "CEST"}
    )
    assert "site.time_zone" in violations(bad)


async def test_decommission_keeps_the_meter_and_frees_the_site(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    site_url, meter_url = f"/v1/sites/{site['siteId']}", f"/v1/meters/{meter['meterId']}"

    refused = await http.delete(site_url, headers=admin.headers)
    assert refused.status_code == 400, refused.text
    assert error_reason(refused) == "ERROR_REASON_FAILED_PRECONDITION"

    assert (await http.delete(meter_url, headers=admin.headers)).status_code == 200
    kept = (await http.get(meter_url, headers=admin.headers)).json()
    assert kept["state"] == "METER_STATE_DECOMMISSIONED"
    assert await list_all_meters(http, admin) == []
    assert len(await list_all_meters(http, admin, "showDecommissioned=true")) == 1
    assert len(await list_all_meters(http, admin, "state=METER_STATE_DECOMMISSIONED")) == 1
    frozen = await http.patch(
        f"{meter_url}?updateMask=name", headers=admin.headers, json={"name": "x"}
    )
    assert frozen.status_code == 400
    assert error_reason(frozen) == "ERROR_REASON_FAILED_PRECONDITION"
    no_token = await http.post(f"{meter_url}/tokens", headers=admin.headers, json={})
    assert no_token.status_code == 400

    assert (await http.delete(site_url, headers=admin.headers)).status_code == 200
    assert (await http.get(site_url, headers=admin.headers)).status_code == 404
    # The decommissioned meter still names its (deleted) site; its readings stay queryable.
    assert (await http.get(meter_url, headers=admin.headers)).json()["siteId"] == site["siteId"]


async def test_list_filters_and_order(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    north = await create_site(http, admin, name="North")
    south = await create_site(http, admin, name="South")
    await create_meter(
        http, admin, north["siteId"], serialNumber="A-1", name="Boiler room", labels={"floor": "1"}
    )
    await create_meter(
        http,
        admin,
        north["siteId"],
        serialNumber="B-2",
        name="PV export",
        direction="FLOW_DIRECTION_EXPORT",
        labels={"floor": "2", "pv": "yes"},
    )
    await create_meter(
        http,
        admin,
        south["siteId"],
        serialNumber="C-3",
        name="Gas",
        commodity="COMMODITY_GAS",
        unit="m3",
        state="METER_STATE_INACTIVE",
    )

    async def serials(query: str) -> list[str]:
        return [m["serialNumber"] for m in await list_all_meters(http, admin, query)]

    assert await serials("") == ["A-1", "B-2", "C-3"]
    assert await serials(f"siteId={north['siteId']}") == ["A-1", "B-2"]
    assert await serials("commodity=COMMODITY_GAS") == ["C-3"]
    assert await serials("state=METER_STATE_INACTIVE") == ["C-3"]
    assert await serials("labels=floor%3D2") == ["B-2"]
    assert await serials("labels=floor") == ["A-1", "B-2"]
    assert await serials("labels=floor&labels=pv%3Dyes") == ["B-2"]
    assert await serials("query=boiler") == ["A-1"]
    assert await serials("query=c-") == ["C-3"]
    assert await serials("connectivity=CONNECTIVITY_OFFLINE") == ["A-1", "B-2", "C-3"]
    assert await serials("connectivity=CONNECTIVITY_ONLINE") == []
    assert await serials("orderBy=serial_number%20desc") == ["C-3", "B-2", "A-1"]
    assert await serials("orderBy=name") == ["A-1", "C-3", "B-2"]
    # Never-seen meters tie on last_seen_time; the id breaks ties, one page at a time too.
    by_last_seen = await list_all_meters(http, admin, "orderBy=lastSeenTime", page_size=1)
    ids = [meter["meterId"] for meter in by_last_seen]
    assert ids == sorted(ids)
    assert len(ids) == 3

    bad_order = await http.get("/v1/meters?orderBy=unit", headers=admin.headers)
    assert "order_by" in violations(bad_order)
    page = (await http.get("/v1/meters?pageSize=1", headers=admin.headers)).json()
    replayed = await http.get(
        f"/v1/meters?pageSize=1&pageToken={page['nextPageToken']}&query=x", headers=admin.headers
    )
    assert "page_token" in violations(replayed)
    sites = (await http.get("/v1/sites?orderBy=name%20desc", headers=admin.headers)).json()
    assert [site["name"] for site in sites["sites"]] == ["South", "North"]


async def test_pagination_returns_every_meter_once_under_concurrent_inserts(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    existing = await asyncio.gather(
        *(create_meter(http, admin, site["siteId"], name=f"m{i:03}") for i in range(60))
    )
    before = {meter["meterId"] for meter in existing}

    async def keep_inserting(stop: asyncio.Event) -> int:
        created = 0
        while not stop.is_set():
            await create_meter(http, admin, site["siteId"], name=f"new-{unique_serial()}")
            created += 1
        return created

    for order in ("", "orderBy=name%20desc", "orderBy=serial_number"):
        stop = asyncio.Event()
        writer = asyncio.create_task(keep_inserting(stop))
        try:
            seen: list[str] = []
            token = ""
            while True:
                query = f"pageSize=7&pageToken={token}" + (f"&{order}" if order else "")
                body = (await http.get(f"/v1/meters?{query}", headers=admin.headers)).json()
                seen.extend(meter["meterId"] for meter in body["meters"])
                token = body["nextPageToken"]
                await asyncio.sleep(0.01)  # let the writer interleave
                if not token:
                    break
        finally:
            stop.set()
            assert await writer > 0
        assert len(seen) == len(set(seen)), f"duplicates with {order!r}"
        assert before <= set(seen), f"missing meters with {order!r}"
