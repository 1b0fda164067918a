"""Analytics end to end: readings written over REST become local-time rollups, kept by the
consumer of telemetry.readings.committed and served by GET /v1/meters/{id}/consumption."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import httpx
from nats.aio.client import Client

from tests.e2e.device_steps import assign, create_meter, create_site
from tests.e2e.helpers import Account, add_user, eventually, register

QUARTER_MS = 900_000
# Europe/Berlin leaves summer time on 2026-10-25 at 01:00 UTC: that local day runs from
# 2026-10-24T22:00Z to 2026-10-25T23:00Z, 25 hours.
DAY_START = "2026-10-24T22:00:00Z"
DAY_END = "2026-10-25T23:00:00Z"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def iso(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def consumption(
    http: httpx.AsyncClient, account: Account, meter_id: str, granularity: str
) -> httpx.Response:
    return await http.get(
        f"/v1/meters/{meter_id}/consumption",
        params={"startTime": DAY_START, "endTime": DAY_END, "granularity": granularity},
        headers=account.headers,
    )


def points(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json().get("series", {}).get("points", [])
    return found


async def test_meter_consumption_counts_local_days_across_dst(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http)
    site = await create_site(http, admin, timeZone="Europe/Berlin")
    meter = (await create_meter(http, admin, site["siteId"], unit="kWh"))["meterId"]

    # A cumulative register read every 15 minutes from an hour before the local day to an
    # hour after it, consuming a varying amount per quarter hour.
    first = ms(DAY_START) - 3_600_000
    times = [first + i * QUARTER_MS for i in range(4 * 27 + 1)]
    values = [1000.0]
    for i in range(1, len(times)):
        values.append(values[-1] + 0.5 + (i % 7) * 0.25)
    expected_day = values[times.index(ms(DAY_END))] - values[times.index(ms(DAY_START))]
    # One reading arrives late: first the day without it (a gap, so the day is incomplete),
    # then the late reading alone, which recomputes that day's buckets.
    late = times.index(ms("2026-10-25T10:00:00Z"))
    written = await http.post(
        f"/v1/meters/{meter}/readings:batchCreate",
        headers=admin.headers,
        json={
            "batchId": "dst-day",
            "timeUnixMs": times[:late] + times[late + 1 :],
            "values": values[:late] + values[late + 1 :],
        },
    )
    assert written.status_code == 200, written.text

    async def day_is_rolled_up(completeness: float) -> bool:
        days = points(await consumption(http, admin, meter, "GRANULARITY_DAY"))
        return (
            len(days) == 1
            and math.isclose(days[0]["value"], expected_day, rel_tol=1e-9)
            and math.isclose(days[0]["completeness"], completeness)
        )

    # 30 of the day's 1,500 minutes lack their 15-minute reading.
    await eventually(lambda: day_is_rolled_up(1 - 30 / 1500), wait_seconds=30)
    backfilled = await http.post(
        f"/v1/meters/{meter}/readings:batchCreate",
        headers=admin.headers,
        json={"batchId": "late", "timeUnixMs": [times[late]], "values": [values[late]]},
    )
    assert backfilled.status_code == 200, backfilled.text
    await eventually(lambda: day_is_rolled_up(1.0), wait_seconds=30)
    [day] = points(await consumption(http, admin, meter, "GRANULARITY_DAY"))
    assert day["startTime"] == DAY_START
    assert day["endTime"] == DAY_END
    assert day["unit"] == "kWh"
    assert day["completeness"] == 1

    hours = points(await consumption(http, admin, meter, "GRANULARITY_HOUR"))
    assert len(hours) == 25
    assert [hour["startTime"] for hour in hours] == [
        iso(ms(DAY_START) + i * 3_600_000) for i in range(25)
    ]
    assert math.isclose(sum(hour["value"] for hour in hours), day["value"], rel_tol=1e-9)
    quarters = points(await consumption(http, admin, meter, "GRANULARITY_QUARTER_HOUR"))
    assert len(quarters) == 100
    assert math.isclose(sum(q["value"] for q in quarters), day["value"], rel_tol=1e-9)

    # The same readings again store nothing new and change nothing; nor does the event about
    # them delivered again. A later reading (the next day) shows the consumer got past it.
    again = await http.post(
        f"/v1/meters/{meter}/readings:batchCreate",
        headers=admin.headers,
        json={"batchId": "all", "timeUnixMs": times, "values": values},
    )
    assert again.status_code == 200, again.text
    redelivered = {
        "organizationId": admin.organization_id,
        "meterId": meter,
        "firstTime": iso(times[0]),
        "lastTime": iso(times[-1]),
        "count": len(times),
    }
    await nats_client.jetstream().publish(
        "telemetry.readings.committed", json.dumps(redelivered).encode()
    )
    next_day = await http.post(
        f"/v1/meters/{meter}/readings:batchCreate",
        headers=admin.headers,
        json={
            "batchId": "next",
            "timeUnixMs": [times[-1] + QUARTER_MS],
            "values": [values[-1] + 2],
        },
    )
    assert next_day.status_code == 200, next_day.text

    async def next_day_counted() -> bool:
        response = await http.get(
            f"/v1/meters/{meter}/consumption",
            params={
                "startTime": DAY_END,
                "endTime": iso(ms(DAY_END) + 86_400_000),
                "granularity": "GRANULARITY_DAY",
            },
            headers=admin.headers,
        )
        found = points(response)
        return len(found) == 1 and math.isclose(
            found[0]["value"], values[-1] + 2 - values[times.index(ms(DAY_END))]
        )

    await eventually(next_day_counted, wait_seconds=30)
    assert points(await consumption(http, admin, meter, "GRANULARITY_DAY")) == [day]
    assert points(await consumption(http, admin, meter, "GRANULARITY_HOUR")) == hours

    # Another organization's admin, and a viewer not assigned to the meter, see nothing.
    stranger = await register(http, "Other Energy")
    assert (await consumption(http, stranger, meter, "GRANULARITY_DAY")).status_code == 404
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    assert (await consumption(http, viewer, meter, "GRANULARITY_DAY")).status_code == 404
    await assign(http, admin, meter, viewer.user_id)
    assert points(await consumption(http, viewer, meter, "GRANULARITY_DAY")) == [day]

    missing = await http.get(
        f"/v1/meters/{meter}/consumption",
        params={"startTime": DAY_START, "endTime": DAY_END},
        headers=admin.headers,
    )
    assert missing.status_code == 400
    # No tariff or emission factor: nothing is priced.
    series = (await consumption(http, admin, meter, "GRANULARITY_DAY")).json()["series"]
    assert series.get("currencyCode", "") == ""
    assert "cost" not in day
    assert "co2Kg" not in day
