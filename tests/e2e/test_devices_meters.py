"""Sites and meters through REST (and gRPC where it matters): validation with field details,
nothing half-written, etags, decommissioning, filters and pagination under concurrent inserts."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from services.launcher.mesh import Mesh
from tests.e2e.device_steps import (
    create_meter,
    create_site,
    list_all_meters,
    meter_body,
    unique_serial,
    while_site_is_deleted,
)
from tests.e2e.helpers import Account, error_reason, register, violations


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


async def test_nothing_lands_on_a_site_while_it_is_deleted(
    http: httpx.AsyncClient, mesh: Mesh
) -> None:
    """Whatever adds to a site waits for a concurrent DeleteSite and then finds the site gone,
    instead of adding a meter or an ingest key to a deleted site."""
    admin = await register(http)
    home = await create_site(http, admin, name="Home")
    mover = await create_meter(http, admin, home["siteId"])

    def import_csv(body: str, query: str = "") -> Awaitable[httpx.Response]:
        return http.post(
            f"/v1/meters:import?{query}",
            headers={**admin.headers, "Content-Type": "text/csv"},
            content=body.encode(),
        )

    calls: dict[str, Callable[[str], Awaitable[httpx.Response]]] = {
        "create meter": lambda site_id: http.post(
            "/v1/meters", headers=admin.headers, json=meter_body(site_id)
        ),
        "move meter": lambda site_id: http.patch(
            f"/v1/meters/{mover['meterId']}?updateMask=siteId",
            headers=admin.headers,
            json={"siteId": site_id},
        ),
        "create ingest key": lambda site_id: http.post(
            "/v1/ingest-keys",
            headers=admin.headers,
            json={"displayName": "head-end", "siteId": site_id},
        ),
        "import to the default site": lambda site_id: import_csv(
            f"serial_number,commodity,unit,register_type\n{unique_serial()},gas,m3,cumulative\n",
            f"siteId={site_id}",
        ),
    }
    for name, call in calls.items():
        site = await create_site(http, admin, name=name)
        response = await while_site_is_deleted(
            mesh.database_url, site["siteId"], call(site["siteId"])
        )
        assert response.status_code == 404, (name, response.text)

    site = await create_site(http, admin, name="import naming the site")
    header = "site_id,serial_number,commodity,unit,register_type"
    body = f"{header}\n{site['siteId']},{unique_serial()},gas,m3,cumulative\n"
    response = await while_site_is_deleted(mesh.database_url, site["siteId"], import_csv(body))
    assert response.status_code == 200, response.text
    assert response.json()["failedCount"] == 1
    assert response.json()["results"][0]["errors"][0]["field"] == "site_id"
    meters = await list_all_meters(http, admin, "showDecommissioned=true")
    assert [meter["meterId"] for meter in meters] == [mover["meterId"]]
    assert meters[0]["siteId"] == home["siteId"]
    keys = (await http.get("/v1/ingest-keys", headers=admin.headers)).json()
    assert keys.get("ingestKeys", []) == []


async def test_listing_the_meters_of_a_site_one_cannot_see_is_not_found(
    http: httpx.AsyncClient,
) -> None:
    admin, intruder = await register(http), await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    gone = await create_site(http, admin, name="Gone")
    assert (await http.delete(f"/v1/sites/{gone['siteId']}", headers=admin.headers)).is_success
    unknown = "00000000-0000-4000-8000-000000000000"

    async def list_site(account: Account, site_id: str) -> httpx.Response:
        return await http.get(f"/v1/meters?siteId={site_id}", headers=account.headers)

    own = await list_site(admin, site["siteId"])
    assert [m["meterId"] for m in own.json()["meters"]] == [meter["meterId"]]
    for account, site_id in (
        (intruder, site["siteId"]),
        (admin, unknown),
        (admin, gone["siteId"]),
    ):
        response = await list_site(account, site_id)
        assert response.status_code == 404, (site_id, response.text)
        assert error_reason(response) == "ERROR_REASON_NOT_FOUND"
    assert "site_id" in violations(await list_site(admin, "not-a-uuid"))


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


def tampered(token: str, position: object) -> str:
    """A page token with its position replaced (it is opaque, not signed)."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data["p"] = position
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_tampered_page_tokens_are_invalid(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    for i in range(3):
        await create_meter(http, admin, site["siteId"], name=f"m{i}")
    some_id = site["siteId"]
    cases: list[tuple[str, object]] = [
        ("orderBy=name", [5, some_id]),
        ("orderBy=name", [None, some_id]),
        ("orderBy=name", ["m1\u0000", some_id]),
        ("orderBy=serial_number", [{"a": 1}, some_id]),
        ("orderBy=serial_number%20desc", [["x"], some_id]),
        ("orderBy=create_time", [1700000000, some_id]),
        ("orderBy=create_time", ["2026-01-01T00:00:00", some_id]),  # no time zone
        ("orderBy=last_seen_time", ["yesterday", some_id]),
        ("orderBy=name", ["m1", 42]),
        ("orderBy=name", ["m1", "not-an-id"]),
        ("orderBy=name", ["m1"]),
        ("orderBy=name", ["m1", some_id, "extra"]),
    ]
    for query, position in cases:
        first = await http.get(f"/v1/meters?pageSize=1&{query}", headers=admin.headers)
        token = tampered(first.json()["nextPageToken"], position)
        response = await http.get(
            f"/v1/meters?pageSize=1&{query}&pageToken={token}", headers=admin.headers
        )
        assert response.status_code == 400, (query, position, response.text)
        assert "page_token" in violations(response), (query, position)
    await create_site(http, admin)  # so that there is a next page
    first = await http.get("/v1/sites?pageSize=1&orderBy=name", headers=admin.headers)
    token = tampered(first.json()["nextPageToken"], [7, some_id])
    response = await http.get(
        f"/v1/sites?pageSize=1&orderBy=name&pageToken={token}", headers=admin.headers
    )
    assert response.status_code == 400, response.text
    # A position of the right types is taken, whatever its values.
    token = tampered(first.json()["nextPageToken"], ["A", some_id])
    response = await http.get(
        f"/v1/sites?pageSize=1&orderBy=name&pageToken={token}", headers=admin.headers
    )
    assert response.status_code == 200, response.text


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
