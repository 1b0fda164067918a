"""The README's devices walkthrough, as a new user would do it: over REST, then the same over
gRPC; and the events and audit records it leaves behind."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from google.api import httpbody_pb2
from nats.aio.client import Client

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from tests.e2e.helpers import add_user, eventually, find_event, register


def csv_file(count: int) -> bytes:
    lines = ["serial_number,name,commodity,unit,register_type,expected_interval,labels"]
    lines += [
        f"EM-{i:04},Apartment {i},electricity,kWh,cumulative,15m,building={'ab'[i % 2]}"
        for i in range(1, count + 1)
    ]
    return ("\n".join(lines) + "\n").encode()


async def test_walkthrough_over_rest(http: httpx.AsyncClient, nats_client: Client) -> None:
    admin = await register(http, "Lovelace Labs")
    site = await http.post(
        "/v1/sites",
        headers=admin.headers,
        json={
            "name": "Berlin office",
            "timeZone": "Europe/Berlin",
            "address": "Unter den Linden 1",
        },
    )
    assert site.status_code == 200, site.text
    site_id = site.json()["siteId"]

    imported = await http.post(
        f"/v1/meters:import?siteId={site_id}",
        headers={**admin.headers, "Content-Type": "text/csv"},
        content=csv_file(100),
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["createdCount"] == 100

    # A filter and pagination: building b, 20 per page.
    seen: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await http.get(
            f"/v1/meters?labels=building%3Db&pageSize=20&orderBy=serial_number&pageToken={token}",
            headers=admin.headers,
        )
        seen += page.json()["meters"]
        token = page.json()["nextPageToken"]
        if not token:
            break
    assert len(seen) == 50
    assert seen[0]["serialNumber"] == "EM-0001"

    meter_id = seen[0]["meterId"]
    token_response = await http.post(
        f"/v1/meters/{meter_id}/tokens", headers=admin.headers, json={"displayName": "logger"}
    )
    assert token_response.json()["token"].startswith("emt_")

    viewer = await add_user(http, admin, "ROLE_VIEWER")
    assigned = await http.post(
        f"/v1/meters/{meter_id}/assignees", headers=admin.headers, json={"userId": viewer.user_id}
    )
    assert assigned.status_code == 200, assigned.text
    mine = (await http.get("/v1/meters", headers=viewer.headers)).json()["meters"]
    assert [meter["meterId"] for meter in mine] == [meter_id]

    # Events for other services, and the audit trail auth keeps.
    created = await find_event(
        nats_client,
        "devices.meter.created",
        lambda e: e.get("meter", {}).get("meterId") == meter_id,
    )
    assert created["meter"]["serialNumber"] == "EM-0001"
    await find_event(
        nats_client, "devices.site.created", lambda e: e.get("site", {}).get("siteId") == site_id
    )

    async def audited() -> bool:
        response = await http.get(
            "/v1/audit-events?actionPrefix=devices.&pageSize=100", headers=admin.headers
        )
        actions = {event["action"] for event in response.json()["auditEvents"]}
        return {
            "devices.site.created",
            "devices.meters.imported",
            "devices.credential.created",
            "devices.meter.assignee_added",
        } <= actions

    await eventually(audited)


async def test_walkthrough_over_grpc(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    admin = await register(http, "Lovelace Labs")
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    stub = devices_pb2_grpc.DeviceServiceStub(gateway_channel)
    site = await stub.CreateSite(
        devices_pb2.CreateSiteRequest(
            site=devices_pb2.Site(name="Berlin office", time_zone="Europe/Berlin")
        ),
        metadata=admin.metadata,
    )
    imported = await stub.ImportMeters(
        devices_pb2.ImportMetersRequest(
            csv=httpbody_pb2.HttpBody(content_type="text/csv", data=csv_file(100)),
            site_id=site.site_id,
        ),
        metadata=admin.metadata,
    )
    assert imported.created_count == 100
    page = await stub.ListMeters(
        devices_pb2.ListMetersRequest(
            page_size=20, labels=["building=b"], order_by="serial_number"
        ),
        metadata=admin.metadata,
    )
    assert len(page.meters) == 20
    assert page.next_page_token
    meter = page.meters[0]
    token = await stub.CreateMeterToken(
        devices_pb2.CreateMeterTokenRequest(meter_id=meter.meter_id), metadata=admin.metadata
    )
    assert token.token.startswith(token.meter_token.prefix)
    await stub.CreateMeterAssignee(
        devices_pb2.CreateMeterAssigneeRequest(meter_id=meter.meter_id, user_id=viewer.user_id),
        metadata=admin.metadata,
    )
    mine = await stub.ListMeters(devices_pb2.ListMetersRequest(), metadata=viewer.metadata)
    assert [m.meter_id for m in mine.meters] == [meter.meter_id]
