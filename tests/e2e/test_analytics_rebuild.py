"""Rollups rebuilt when what they depend on changes in the registry: a meter's multiplier, the
meter moving to a site in another time zone (both sites' sums follow), a site's time zone; and
the rollup consumer's gauges (GetRollupStatus, gRPC only)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.e2e.analytics_steps import (
    BERLIN,
    DAY_MS,
    HOUR_MS,
    QUARTER_MS,
    close,
    consumption,
    local_day_start,
    local_hour_start,
    local_midnight,
    parse_ms,
    quarter_starts,
    same_values,
    site_consumption,
    sum_by,
    values_by_start,
    wait_for,
    write_quarter_amounts,
    write_readings,
)
from tests.e2e.device_steps import create_meter, create_site
from tests.e2e.helpers import Account, add_user, register

WAIT = 60
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


async def patch(
    http: httpx.AsyncClient, admin: Account, path: str, mask: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = await http.patch(path, params={"updateMask": mask}, json=body, headers=admin.headers)
    assert response.status_code == 200, response.text
    updated: dict[str, Any] = response.json()
    return updated


async def site_total(http: httpx.AsyncClient, admin: Account, site: str, lo: int, hi: int) -> float:
    """Everything the site's meters consumed over [lo, hi) (whole days of its zone)."""
    series = await site_consumption(http, admin, site, lo, hi)
    return math.fsum(p["value"] for s in series for p in s["points"])


async def rollup_status(channel: grpc.aio.Channel, account: Account) -> analytics_pb2.RollupStatus:
    stub: Any = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    status: analytics_pb2.RollupStatus = await stub.GetRollupStatus(
        analytics_pb2.GetRollupStatusRequest(), metadata=account.metadata, timeout=10
    )
    return status


async def test_a_multiplier_change_rebuilds_the_meters_rollups(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    admin = await register(http, "Analytics Rebuilds")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    first, last = date(2026, 6, 1), date(2026, 6, 3)
    starts = quarter_starts(first, last)
    amounts = [0.4 + (i % 9) * 0.05 for i in range(len(starts))]
    other_amounts = [1.0 + (i % 4) * 0.1 for i in range(len(starts))]
    meter = (await create_meter(http, admin, site))["meterId"]
    other = (await create_meter(http, admin, site))["meterId"]
    await write_quarter_amounts(http, admin, meter, starts, amounts)
    await write_quarter_amounts(http, admin, other, starts, other_amounts)
    lo, hi = starts[0], starts[-1] + QUARTER_MS

    def days(scale: float) -> dict[int, float]:
        return sum_by(
            starts,
            [a * scale + b for a, b in zip(amounts, other_amounts, strict=True)],
            local_day_start,
        )

    await wait_for(
        lambda: site_consumption(http, admin, site, lo, hi),
        lambda s: len(s) == 1 and same_values(values_by_start(s[0]), days(1.0)),
        "the site's days before the change",
        WAIT,
    )

    # A current transformer of ratio 2.5 was fitted all along: the stored readings mean more.
    updated = await patch(http, admin, f"/v1/meters/{meter}", "multiplier", {"multiplier": 2.5})
    assert updated["multiplier"] == 2.5
    scaled = sum_by(starts, [a * 2.5 for a in amounts], local_day_start)
    await wait_for(
        lambda: consumption(http, admin, meter, lo, hi),
        lambda s: same_values(values_by_start(s), scaled),
        "the meter's days at the new multiplier",
        WAIT,
    )
    await wait_for(
        lambda: site_consumption(http, admin, site, lo, hi),
        lambda s: len(s) == 1 and same_values(values_by_start(s[0]), days(2.5)),
        "the site's days at the new multiplier",
        WAIT,
    )
    hours = await consumption(http, admin, meter, lo, hi, "GRANULARITY_HOUR")
    expected_hours = sum_by(starts, [a * 2.5 for a in amounts], lambda t: t - t % HOUR_MS)
    assert same_values(values_by_start(hours), expected_hours)
    month = await consumption(
        http,
        admin,
        meter,
        local_midnight(date(2026, 6, 1)),
        local_midnight(date(2026, 7, 1)),
        "GRANULARITY_MONTH",
    )
    assert close(month["points"][0]["value"], 2.5 * math.fsum(amounts))
    await wait_for(
        lambda: rollup_status(gateway_channel, admin),
        lambda status: status.rebuilding_meters == 0,
        "no rebuild in progress",
        WAIT,
    )

    # Readings after the change count at the new multiplier too.
    await write_readings(http, admin, meter, [hi + QUARTER_MS], [100 + math.fsum(amounts) + 2])
    await wait_for(
        lambda: consumption(http, admin, meter, hi, hi + DAY_MS),
        lambda s: len(s["points"]) == 1 and close(s["points"][0]["value"], 5.0),
        "a new reading at the new multiplier",
        WAIT,
    )


async def test_moving_a_meter_to_a_site_in_another_zone_rebuilds_it_and_both_sites(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http, "Analytics Rebuilds")
    berlin = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    new_york = (await create_site(http, admin, timeZone="America/New_York"))["siteId"]
    # Three UTC days of readings for three meters: one moves from Berlin to New York.
    start = parse_ms("2026-06-10T00:00:00Z")
    starts = [start + i * QUARTER_MS for i in range(3 * 96)]
    moving = [0.5 + (i % 7) * 0.1 for i in range(len(starts))]
    staying = [0.3 + (i % 5) * 0.1 for i in range(len(starts))]
    resident = [0.9 + (i % 3) * 0.1 for i in range(len(starts))]
    moving[20] = 6.0  # its peak, higher than anything else at either site
    meters: dict[str, str] = {}
    for name, site, amounts in (
        ("moving", berlin, moving),
        ("staying", berlin, staying),
        ("resident", new_york, resident),
    ):
        meters[name] = (await create_meter(http, admin, site, name=name))["meterId"]
        await write_quarter_amounts(http, admin, meters[name], starts, amounts)
    # Wide enough for whole local days of both zones around the data.
    lo, hi = start - 2 * DAY_MS, start + 5 * DAY_MS
    total = {name: math.fsum(a) for name, a in (("m", moving), ("s", staying), ("r", resident))}

    async def totals() -> tuple[float, float]:
        return (
            await site_total(http, admin, berlin, lo, hi),
            await site_total(http, admin, new_york, lo, hi),
        )

    def sums_are(expected: tuple[float, float]) -> Callable[[tuple[float, float]], bool]:
        return lambda found: all(close(f, e) for f, e in zip(found, expected, strict=True))

    await wait_for(
        totals, sums_are((total["m"] + total["s"], total["r"])), "both sites before", WAIT
    )
    berlin_days = sum_by(starts, moving, lambda t: local_day_start(t, BERLIN))
    assert same_values(
        values_by_start(await consumption(http, admin, meters["moving"], lo, hi)), berlin_days
    )

    await patch(http, admin, f"/v1/meters/{meters['moving']}", "siteId", {"siteId": new_york})
    new_york_days = sum_by(starts, moving, lambda t: local_day_start(t, NEW_YORK))
    series = await wait_for(
        lambda: consumption(http, admin, meters["moving"], lo, hi),
        lambda s: same_values(values_by_start(s), new_york_days),
        "the moved meter's days in New York time",
        WAIT,
    )
    assert all(p["startTime"].endswith("T04:00:00Z") for p in series["points"])
    await wait_for(
        totals, sums_are((total["s"], total["m"] + total["r"])), "both sites after", WAIT
    )
    # Berlin's peak is now the staying meter's own; New York's includes the moved meter's.
    berlin_days_after = await site_consumption(http, admin, berlin, start, start + 3 * DAY_MS)
    assert close(max(p["peakDemand"] for p in berlin_days_after[0]["points"]), max(staying) * 4)
    ny_hours = await site_consumption(
        http, admin, new_york, start, start + DAY_MS, "GRANULARITY_HOUR"
    )
    combined = [m + r for m, r in zip(moving, resident, strict=True)]
    assert same_values(
        values_by_start(ny_hours[0]),
        {
            k: v
            for k, v in sum_by(starts, combined, lambda t: local_hour_start(t, NEW_YORK)).items()
            if start <= k < start + DAY_MS
        },
    )
    peak_hour = next(p for p in ny_hours[0]["points"] if p["startTime"] == "2026-06-10T05:00:00Z")
    assert close(peak_hour["peakDemand"], (6.0 + resident[20]) * 4)


async def test_a_site_time_zone_change_rebuilds_its_meters_days(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http, "Analytics Rebuilds")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    meter = (await create_meter(http, admin, site))["meterId"]
    start = parse_ms("2026-06-10T00:00:00Z")
    starts = [start + i * QUARTER_MS for i in range(3 * 96)]
    amounts = [0.2 + (i % 11) * 0.07 for i in range(len(starts))]
    await write_quarter_amounts(http, admin, meter, starts, amounts)
    lo, hi = start - 2 * DAY_MS, start + 5 * DAY_MS
    await wait_for(
        lambda: consumption(http, admin, meter, lo, hi),
        lambda s: same_values(
            values_by_start(s), sum_by(starts, amounts, lambda t: local_day_start(t, BERLIN))
        ),
        "Berlin days",
        WAIT,
    )

    await patch(http, admin, f"/v1/sites/{site}", "timeZone", {"timeZone": "Asia/Tokyo"})
    tokyo_days = sum_by(starts, amounts, lambda t: local_day_start(t, TOKYO))
    series = await wait_for(
        lambda: consumption(http, admin, meter, lo, hi),
        lambda s: same_values(values_by_start(s), tokyo_days),
        "Tokyo days",
        WAIT,
    )
    assert all(p["startTime"].endswith("T15:00:00Z") for p in series["points"])
    site_days = await site_consumption(http, admin, site, lo, hi)
    assert same_values(values_by_start(site_days[0]), tokyo_days)


async def test_rollup_status_counts_what_the_consumer_applied(
    http: httpx.AsyncClient, gateway_channel: grpc.aio.Channel
) -> None:
    admin = await register(http, "Analytics Status")
    site = (await create_site(http, admin))["siteId"]
    meter = (await create_meter(http, admin, site))["meterId"]
    before = await rollup_status(gateway_channel, admin)
    written_after = time.time()
    day = date(2026, 6, 5)
    starts = quarter_starts(day, day + timedelta(days=1))
    await write_quarter_amounts(http, admin, meter, starts, [1.0] * len(starts))

    status = await wait_for(
        lambda: rollup_status(gateway_channel, admin),
        lambda s: (
            s.applied_events > before.applied_events
            and s.applied_readings >= before.applied_readings + len(starts) + 1
            and s.pending_events == 0
        ),
        "the readings applied",
        WAIT,
    )
    assert status.HasField("last_apply_time")
    assert status.last_apply_time.ToSeconds() >= int(written_after)
    assert status.HasField("last_lag")
    assert status.last_lag.ToTimedelta() >= timedelta(0)
    assert status.rebuilding_meters >= 0
    days = await consumption(
        http, admin, meter, local_midnight(day), local_midnight(day + timedelta(days=2))
    )
    assert [p["value"] for p in days["points"]] == [96.0, 96.0]

    # Operators read it; viewers may not.
    operator = await add_user(http, admin, "ROLE_OPERATOR")
    assert (await rollup_status(gateway_channel, operator)).applied_events >= 0
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await rollup_status(gateway_channel, viewer)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
