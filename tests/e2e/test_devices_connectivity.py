"""last_seen_time from telemetry.readings.committed, and connectivity.

The test controls time through the data, not the clock: readings carry their own timestamps
(an hour-old reading makes a meter OFFLINE at once), and a meter expecting a reading every
second is OFFLINE two seconds after its last one. The devices service's monitor sleeps until
the next meter is due to go offline, so this takes seconds, not the minutes a 15-minute meter
would need, and exercises the same code."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nats.aio.client import Client

from tests.e2e.device_steps import (
    create_meter,
    create_site,
    events_on,
    publish_readings,
    rfc3339,
)
from tests.e2e.helpers import Account, eventually, find_event, register


async def get_meter(http: httpx.AsyncClient, admin: Account, meter_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/meters/{meter_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    meter: dict[str, Any] = response.json()
    return meter


async def test_last_seen_only_moves_forward(http: httpx.AsyncClient, nats_client: Client) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    assert "lastSeenTime" not in meter
    newer = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    await publish_readings(nats_client, admin.organization_id, meter["meterId"], newer)

    async def seen_at(moment: datetime) -> bool:
        found = await get_meter(http, admin, meter["meterId"])
        return found.get("lastSeenTime") == rfc3339(moment)

    await eventually(lambda: seen_at(newer))
    # An older batch (late data, a redelivery) does not move it back.
    await publish_readings(
        nats_client, admin.organization_id, meter["meterId"], newer - timedelta(hours=1)
    )
    # Nor does an event naming the meter under another organization.
    other = await register(http)
    await publish_readings(
        nats_client, other.organization_id, meter["meterId"], newer + timedelta(seconds=30)
    )
    marker = await create_meter(http, admin, site["siteId"])
    await publish_readings(nats_client, admin.organization_id, marker["meterId"], newer)
    await eventually(lambda: _has_last_seen(http, admin, marker["meterId"]))
    # The consumer handles events in order, so the two above were handled before the marker.
    assert (await get_meter(http, admin, meter["meterId"]))["lastSeenTime"] == rfc3339(newer)


async def _has_last_seen(http: httpx.AsyncClient, admin: Account, meter_id: str) -> bool:
    return "lastSeenTime" in await get_meter(http, admin, meter_id)


async def test_malformed_events_go_to_dead_letters(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await js.publish("telemetry.readings.committed", b'{"meterId": 42}')
    dead = await js.subscribe("deadletter.telemetry.devices-last-seen", ordered_consumer=True)
    try:
        letter = await dead.next_msg(timeout=20)
        assert letter.data == b'{"meterId": 42}'
    finally:
        await dead.unsubscribe()


async def test_a_meter_comes_online_then_goes_offline(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"], expectedInterval="1s")
    meter_id = meter["meterId"]
    assert meter["connectivity"] == "CONNECTIVITY_OFFLINE"  # never seen

    await publish_readings(nats_client, admin.organization_id, meter_id, datetime.now(UTC))
    online = await find_event(
        nats_client,
        "devices.meter.connectivity_changed",
        lambda e: e.get("meterId") == meter_id and e["connectivity"] == "CONNECTIVITY_ONLINE",
    )
    assert online["previousConnectivity"] == "CONNECTIVITY_OFFLINE"
    assert online["organizationId"] == admin.organization_id
    assert online["serialNumber"] == meter["serialNumber"]

    # Two expected intervals (2 s) without a reading: OFFLINE, announced once.
    offline = await find_event(
        nats_client,
        "devices.meter.connectivity_changed",
        lambda e: e.get("meterId") == meter_id and e["connectivity"] == "CONNECTIVITY_OFFLINE",
        wait_seconds=10,
    )
    assert offline["previousConnectivity"] == "CONNECTIVITY_ONLINE"
    assert (await get_meter(http, admin, meter_id))["connectivity"] == "CONNECTIVITY_OFFLINE"
    offline_ids = await http.get(
        f"/v1/meters?connectivity=CONNECTIVITY_OFFLINE&siteId={site['siteId']}",
        headers=admin.headers,
    )
    assert [m["meterId"] for m in offline_ids.json()["meters"]] == [meter_id]
    changes = await events_on(
        nats_client, "devices.meter.connectivity_changed", lambda e: e.get("meterId") == meter_id
    )
    assert [e["connectivity"] for e in changes] == ["CONNECTIVITY_ONLINE", "CONNECTIVITY_OFFLINE"]


async def test_connectivity_follows_the_readings_timestamps(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    stale = await create_meter(http, admin, site["siteId"], expectedInterval="900s")
    fresh = await create_meter(http, admin, site["siteId"], expectedInterval="900s")
    paused = await create_meter(
        http, admin, site["siteId"], expectedInterval="900s", state="METER_STATE_INACTIVE"
    )
    now = datetime.now(UTC)
    # Last reading 31 minutes ago: more than two 15-minute intervals, so still OFFLINE.
    await publish_readings(
        nats_client, admin.organization_id, stale["meterId"], now - timedelta(minutes=31)
    )
    # 29 minutes ago: within two intervals, ONLINE.
    await publish_readings(
        nats_client, admin.organization_id, fresh["meterId"], now - timedelta(minutes=29)
    )
    await publish_readings(nats_client, admin.organization_id, paused["meterId"], now)

    async def online_ids() -> list[str]:
        response = await http.get(
            f"/v1/meters?connectivity=CONNECTIVITY_ONLINE&siteId={site['siteId']}",
            headers=admin.headers,
        )
        return sorted(m["meterId"] for m in response.json()["meters"])

    expected = sorted([fresh["meterId"], paused["meterId"]])
    await eventually(lambda: _equals(online_ids(), expected))
    assert "lastSeenTime" in await get_meter(http, admin, stale["meterId"])
    assert (await get_meter(http, admin, stale["meterId"]))[
        "connectivity"
    ] == "CONNECTIVITY_OFFLINE"
    await find_event(
        nats_client,
        "devices.meter.connectivity_changed",
        lambda e: e.get("meterId") == fresh["meterId"],
    )
    # An INACTIVE meter is not expected to report: no connectivity events for it.
    await asyncio.sleep(0.5)
    quiet = await events_on(
        nats_client,
        "devices.meter.connectivity_changed",
        lambda e: e.get("meterId") in {stale["meterId"], paused["meterId"]},
    )
    assert quiet == []


async def _equals(value: Any, expected: object) -> bool:
    return bool(await value == expected)
