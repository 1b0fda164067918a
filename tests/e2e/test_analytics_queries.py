"""Analytics queries end to end, over REST through Envoy: site and organization consumption
(local days across DST, half-hour zones, sums of meters, netting, commodity filter, UTC or a
given zone, coincident peaks), viewer scoping, the site summary, top consumers and the CSV
export, each checked against a straightforward computation in the test over the amounts it
wrote; and bad input for every query RPC."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest

from tests.e2e.analytics_steps import (
    DAY_MS,
    HOUR_MS,
    QUARTER_MS,
    assign_tariff,
    close,
    consumption,
    counter,
    create_emission_factor,
    create_tariff,
    flat_version,
    get_ok,
    iso,
    local_day_start,
    local_hour_start,
    local_midnight,
    only_series,
    org_consumption,
    parse_ms,
    quarter_starts,
    same_values,
    site_consumption,
    sum_by,
    utc_day_start,
    values_by_start,
    wait_for,
    write_quarter_amounts,
    write_readings,
)
from tests.e2e.device_steps import assign, create_meter, create_site
from tests.e2e.helpers import Account, add_user, register, violations

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WAIT = 60
CSV_HEADER = [
    "meter_id",
    "site_id",
    "start_time",
    "end_time",
    "value",
    "unit",
    "cost",
    "currency",
    "co2_kg",
    "completeness",
]


def pattern(count: int, base: float, step: float, period: int) -> list[float]:
    """A varying, repeating consumption per quarter hour."""
    return [base + (i % period) * step for i in range(count)]


def added(*series: list[float]) -> list[float]:
    return [math.fsum(values) for values in zip(*series, strict=True)]


def series_by_kind(series: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(commodity, direction) → series; fails on two series of one kind."""
    kinds = {(one["commodity"], one["direction"]): one for one in series}
    assert len(kinds) == len(series), series
    return kinds


def coincident_peaks(
    starts: list[int], totals: list[float], bucket: Callable[[int], int]
) -> dict[int, tuple[float, int]]:
    """Per bucket: the highest quarter-hour total as demand (kW) and when that quarter began."""
    peaks: dict[int, tuple[float, int]] = {}
    for start, total in zip(starts, totals, strict=True):
        key = bucket(start)
        demand = total * HOUR_MS / QUARTER_MS
        if key not in peaks or demand > peaks[key][0]:
            peaks[key] = (demand, start)
    return peaks


def points_added(series: list[dict[str, Any]]) -> dict[int, float]:
    """Several series' values added per bucket start."""
    sums: dict[int, list[float]] = {}
    for one in series:
        for start, value in values_by_start(one).items():
            sums.setdefault(start, []).append(value)
    return {start: math.fsum(values) for start, values in sums.items()}


async def setup_org(http: httpx.AsyncClient) -> Account:
    return await register(http, "Analytics Queries")


# --- local buckets across DST and in a half-hour zone -----------------------------------------


@pytest.mark.parametrize(
    ("zone_name", "day", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 29), 23),
        ("Europe/Berlin", date(2026, 10, 25), 25),
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
        ("Asia/Kolkata", date(2026, 3, 29), 24),
    ],
)
async def test_site_and_org_consumption_count_local_hours_and_days(
    http: httpx.AsyncClient, zone_name: str, day: date, hours: int
) -> None:
    zone = ZoneInfo(zone_name)
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone=zone_name))["siteId"]
    first, last = day - timedelta(days=1), day + timedelta(days=1)
    starts = quarter_starts(first, last, zone)
    # Two meters summed by the site: one in kWh, one in Wh (normalised to kWh).
    kwh = pattern(len(starts), 0.5, 0.1, 11)
    wh = pattern(len(starts), 0.2, 0.05, 7)
    meter_kwh = (await create_meter(http, admin, site, unit="kWh"))["meterId"]
    meter_wh = (await create_meter(http, admin, site, unit="Wh"))["meterId"]
    await write_quarter_amounts(http, admin, meter_kwh, starts, kwh)
    await write_quarter_amounts(http, admin, meter_wh, starts, wh, scale=1000)
    total = added(kwh, wh)

    day_start, day_end = local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)
    assert day_end - day_start == hours * HOUR_MS  # the test's own calendar
    expected_hours = {
        start: value
        for start, value in sum_by(starts, total, lambda t: local_hour_start(t, zone)).items()
        if day_start <= start < day_end
    }
    assert list(expected_hours) == [day_start + i * HOUR_MS for i in range(hours)]
    expected_days = sum_by(starts, total, lambda t: local_day_start(t, zone))
    range_start, range_end = local_midnight(first, zone), local_midnight(last + timedelta(1), zone)

    async def meter_days() -> list[dict[str, Any]]:
        return [
            await consumption(http, admin, meter, range_start, range_end)
            for meter in (meter_kwh, meter_wh)
        ]

    # The meters first (GetMeterConsumption), then the site: it is the sum of its meters.
    per_meter = await wait_for(
        meter_days,
        lambda found: same_values(points_added(found), expected_days),
        f"the meters' {zone_name} days",
        WAIT,
    )

    async def site_days() -> list[dict[str, Any]]:
        return await site_consumption(http, admin, site, range_start, range_end)

    days = only_series(
        await wait_for(
            site_days,
            lambda s: len(s) == 1 and same_values(values_by_start(s[0]), expected_days),
            f"the site's {zone_name} days",
            WAIT,
        )
    )
    assert days["commodity"] == "COMMODITY_ELECTRICITY"
    assert days["direction"] == "FLOW_DIRECTION_IMPORT"
    assert [p["unit"] for p in days["points"]] == ["kWh"] * 3
    middle = days["points"][1]
    assert middle["startTime"] == iso(day_start)
    assert middle["endTime"] == iso(day_end)
    assert middle["completeness"] == pytest.approx(1.0)

    hourly = only_series(
        await site_consumption(http, admin, site, day_start, day_end, "GRANULARITY_HOUR")
    )
    print(f"{zone_name} {day}: {len(hourly['points'])} hourly site buckets")
    assert len(hourly["points"]) == hours
    assert same_values(values_by_start(hourly), expected_hours)
    assert all(
        parse_ms(p["endTime"]) - parse_ms(p["startTime"]) == HOUR_MS for p in hourly["points"]
    )
    if zone_name == "Asia/Kolkata":  # +05:30: local hours start at half past the UTC hour
        assert all(p["startTime"].endswith(":30:00Z") for p in hourly["points"])
    assert close(math.fsum(p["value"] for p in hourly["points"]), middle["value"])

    for i, point in enumerate(days["points"]):
        assert close(point["value"], math.fsum(m["points"][i]["value"] for m in per_meter))

    # The organization (this one site) in the site's zone gives the same days; in UTC (the
    # default) its days start at 00:00Z.
    org = only_series(
        await org_consumption(http, admin, range_start, range_end, timeZone=zone_name)
    )
    assert same_values(values_by_start(org), expected_days)
    utc_start, utc_end = utc_day_start(range_start) + DAY_MS, utc_day_start(range_end)
    org_utc = only_series(await org_consumption(http, admin, utc_start, utc_end))
    expected_utc = {
        start: value
        for start, value in sum_by(starts, total, utc_day_start).items()
        if utc_start <= start < utc_end
    }
    assert same_values(values_by_start(org_utc), expected_utc)


# --- sums over sites, coincident peaks, UTC or a given zone -------------------------------------


async def test_org_consumption_sums_sites_and_takes_the_highest_site_peak(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    berlin = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    new_york = (await create_site(http, admin, timeZone="America/New_York"))["siteId"]
    # Three UTC days, 10 to 13 June 2026.
    start = parse_ms("2026-06-10T00:00:00Z")
    starts = [start + i * QUARTER_MS for i in range(3 * 96)]
    a = pattern(len(starts), 1.0, 0.1, 9)
    b = pattern(len(starts), 0.8, 0.2, 5)
    c = pattern(len(starts), 2.0, 0.05, 13)
    # Berlin's two meters peak at different quarter hours (so the site's coincident peak is
    # less than the sum of their peaks); New York's meter peaks at the same quarter as one of
    # them (so the organization's peak, the highest site peak, is not the coincident total).
    a[40], b[44], c[40] = 9.0, 7.5, 7.0
    a[150], c[200] = 3.0, 12.0
    for site, amounts in ((berlin, a), (berlin, b), (new_york, c)):
        meter = (await create_meter(http, admin, site))["meterId"]
        await write_quarter_amounts(http, admin, meter, starts, amounts)
    berlin_total, everything = added(a, b), added(a, b, c)
    end = start + 3 * DAY_MS

    expected = sum_by(starts, everything, utc_day_start)
    org = only_series(
        await wait_for(
            lambda: org_consumption(http, admin, start, end),
            lambda s: len(s) == 1 and same_values(values_by_start(s[0]), expected),
            "organization days in UTC",
            WAIT,
        )
    )
    assert [p["startTime"] for p in org["points"]] == [
        "2026-06-10T00:00:00Z",
        "2026-06-11T00:00:00Z",
        "2026-06-12T00:00:00Z",
    ]
    berlin_peaks = coincident_peaks(starts, berlin_total, utc_day_start)
    ny_peaks = coincident_peaks(starts, c, utc_day_start)
    for point in org["points"]:
        key = parse_ms(point["startTime"])
        demand, when = max(berlin_peaks[key], ny_peaks[key])
        assert close(point["peakDemand"], demand), point
        assert parse_ms(point["peakTime"]) == when, point
    # Day 1: Berlin's coincident peak is 9 + b[40] (not 9 + 8.5), New York's 7: the highest
    # site peak, not the 16 + b[40] of the three meters together.
    assert close(org["points"][0]["peakDemand"], (9.0 + b[40]) * 4)

    site = only_series(await site_consumption(http, admin, berlin, start, end, "GRANULARITY_HOUR"))
    site_peaks = coincident_peaks(starts, berlin_total, lambda t: t - t % HOUR_MS)
    assert len(site["points"]) == 72
    for point in site["points"]:
        demand, when = site_peaks[parse_ms(point["startTime"])]
        assert close(point["peakDemand"], demand), point
        assert parse_ms(point["peakTime"]) == when, point

    # In Berlin's zone the organization's days start at 22:00Z (summer time).
    lo, hi = local_midnight(date(2026, 6, 11), BERLIN), local_midnight(date(2026, 6, 13), BERLIN)
    in_berlin = only_series(await org_consumption(http, admin, lo, hi, timeZone="Europe/Berlin"))
    by_berlin_day = sum_by(starts, everything, lambda t: local_day_start(t, BERLIN))
    assert [p["startTime"] for p in in_berlin["points"]] == [
        "2026-06-10T22:00:00Z",
        "2026-06-11T22:00:00Z",
    ]
    assert same_values(values_by_start(in_berlin), {k: by_berlin_day[k] for k in (lo, lo + DAY_MS)})


# --- directions, netting and the commodity filter ----------------------------------------------


async def test_site_series_per_commodity_and_direction_netted_on_request(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    day = date(2026, 6, 15)
    starts = quarter_starts(day, day)
    imported = pattern(len(starts), 0.6, 0.1, 8)
    # Solar: nothing at night, more than the import around midday.
    exported = [
        0.0 if not 32 <= i % 96 < 72 else 0.4 + 0.05 * (i % 6) + (0.8 if 44 <= i < 56 else 0)
        for i in range(len(starts))
    ]
    gas = pattern(len(starts), 0.05, 0.01, 4)
    meters = {
        "import": (await create_meter(http, admin, site))["meterId"],
        "export": (
            await create_meter(http, admin, site, direction="FLOW_DIRECTION_EXPORT", name="PV")
        )["meterId"],
        "gas": (
            await create_meter(http, admin, site, commodity="COMMODITY_GAS", unit="m3", name="Gas")
        )["meterId"],
    }
    for kind, amounts in (("import", imported), ("export", exported), ("gas", gas)):
        await write_quarter_amounts(http, admin, meters[kind], starts, amounts)
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    totals = {k: math.fsum(v) for k, v in (("i", imported), ("x", exported), ("g", gas))}

    expected_totals = {
        ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_IMPORT"): totals["i"],
        ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_EXPORT"): totals["x"],
        ("COMMODITY_GAS", "FLOW_DIRECTION_IMPORT"): totals["g"],
    }

    def all_there(series: list[dict[str, Any]]) -> bool:
        got = {(s["commodity"], s["direction"]): s["points"] for s in series}
        return set(got) == set(expected_totals) and all(
            len(got[kind]) == 1 and close(got[kind][0]["value"], total)
            for kind, total in expected_totals.items()
        )

    series = series_by_kind(
        await wait_for(
            lambda: site_consumption(http, admin, site, lo, hi),
            all_there,
            "three series: electricity import and export, gas",
            WAIT,
        )
    )
    assert series[("COMMODITY_GAS", "FLOW_DIRECTION_IMPORT")]["points"][0]["unit"] == "m3"
    assert series[("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_EXPORT")]["points"][0]["unit"] == "kWh"

    gas_only = only_series(
        await site_consumption(http, admin, site, lo, hi, commodity="COMMODITY_GAS")
    )
    assert gas_only["commodity"] == "COMMODITY_GAS"
    assert close(gas_only["points"][0]["value"], totals["g"])

    # Netted: one series per commodity, direction unset, import minus export (negative in the
    # sunny hours).
    netted = await site_consumption(http, admin, site, lo, hi, "GRANULARITY_HOUR", net="true")
    assert {(s["commodity"], s["direction"]) for s in netted} == {
        ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_UNSPECIFIED"),
        ("COMMODITY_GAS", "FLOW_DIRECTION_UNSPECIFIED"),
    }
    electricity = next(s for s in netted if s["commodity"] == "COMMODITY_ELECTRICITY")
    net_amounts = [i - x for i, x in zip(imported, exported, strict=True)]
    expected_net = sum_by(starts, net_amounts, lambda t: local_hour_start(t, BERLIN))
    assert same_values(values_by_start(electricity), expected_net)
    assert any(value < 0 for value in expected_net.values())
    net_day = only_series(
        await site_consumption(
            http, admin, site, lo, hi, net="true", commodity="COMMODITY_ELECTRICITY"
        )
    )
    assert close(net_day["points"][0]["value"], totals["i"] - totals["x"])

    # The organization: same filter and netting.
    org_gas = only_series(
        await org_consumption(
            http, admin, lo, hi, timeZone="Europe/Berlin", commodity="COMMODITY_GAS"
        )
    )
    assert close(org_gas["points"][0]["value"], totals["g"])
    org_net = await org_consumption(http, admin, lo, hi, timeZone="Europe/Berlin", net="true")
    assert len(org_net) == 2
    org_electricity = next(s for s in org_net if s["commodity"] == "COMMODITY_ELECTRICITY")
    assert close(org_electricity["points"][0]["value"], totals["i"] - totals["x"])

    # The summary reports import as total and export separately.
    summary = await get_ok(
        http, admin, f"/v1/sites/{site}/summary", startTime=iso(lo), endTime=iso(hi)
    )
    by_commodity = {c["commodity"]: c for c in summary["commodities"]}
    assert close(by_commodity["COMMODITY_ELECTRICITY"]["total"], totals["i"])
    assert close(by_commodity["COMMODITY_ELECTRICITY"]["exported"], totals["x"])
    assert close(by_commodity["COMMODITY_GAS"]["total"], totals["g"])
    assert by_commodity["COMMODITY_GAS"]["unit"] == "m3"


async def test_site_completeness_is_the_share_of_its_meters_expected_time(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    day = date(2026, 6, 18)
    starts = quarter_starts(day, day)
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    amounts = pattern(len(starts), 0.5, 0.1, 6)
    complete = (await create_meter(http, admin, site))["meterId"]
    gappy = (await create_meter(http, admin, site))["meterId"]
    await write_quarter_amounts(http, admin, complete, starts, amounts)
    # The second meter is silent from 10:00 to 12:00: its readings on either side still give
    # the amount consumed, but those two hours are not covered.
    times = [*starts, hi]
    values = counter(amounts)
    gap = [i for i, t in enumerate(times) if lo + 10 * HOUR_MS < t < lo + 12 * HOUR_MS]
    assert len(gap) == 7
    kept = [i for i in range(len(times)) if i not in gap]
    await write_readings(http, admin, gappy, [times[i] for i in kept], [values[i] for i in kept])
    expected = (24 + 22) / 48

    await wait_for(
        lambda: site_consumption(http, admin, site, lo, hi),
        lambda s: (
            len(s) == 1
            and len(s[0]["points"]) == 1
            and close(s[0]["points"][0]["value"], 2 * math.fsum(amounts))
            and close(s[0]["points"][0]["completeness"], expected)
        ),
        "the site's day with one meter's two-hour gap",
        WAIT,
    )
    hours = only_series(await site_consumption(http, admin, site, lo, hi, "GRANULARITY_HOUR"))
    by_hour = values_by_start(hours, "completeness")
    assert close(by_hour[lo + 10 * HOUR_MS], 0.5)
    assert close(by_hour[lo + 11 * HOUR_MS], 0.5)
    assert close(by_hour[lo + 9 * HOUR_MS], 1.0)
    summary = await get_ok(
        http, admin, f"/v1/sites/{site}/summary", startTime=iso(lo), endTime=iso(hi)
    )
    assert close(summary["commodities"][0]["completeness"], expected)


# --- what a viewer sees ------------------------------------------------------------------------


async def test_a_viewer_sees_only_their_meters_in_every_query(http: httpx.AsyncClient) -> None:
    admin = await setup_org(http)
    shared = (await create_site(http, admin, name="Shared"))["siteId"]
    hidden = (await create_site(http, admin, name="Hidden"))["siteId"]
    day = date(2026, 6, 16)
    starts = quarter_starts(day, day)
    mine = pattern(len(starts), 1.0, 0.2, 6)
    theirs = pattern(len(starts), 3.0, 0.1, 4)
    mine[10] = 8.0  # the viewer's meter's own peak
    theirs[50] = 9.5
    meter = (await create_meter(http, admin, shared))["meterId"]
    neighbour = (await create_meter(http, admin, shared))["meterId"]
    elsewhere = (await create_meter(http, admin, hidden))["meterId"]
    for meter_id, amounts in ((meter, mine), (neighbour, theirs), (elsewhere, theirs)):
        await write_quarter_amounts(http, admin, meter_id, starts, amounts)
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    await assign(http, admin, meter, viewer.user_id)
    stranger = await register(http, "Other Energy")
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    everything = math.fsum(mine) + math.fsum(theirs)

    await wait_for(
        lambda: org_consumption(http, admin, lo, hi, timeZone="Europe/Berlin"),
        lambda s: (
            len(s) == 1
            and len(s[0]["points"]) == 1
            and close(s[0]["points"][0]["value"], everything + math.fsum(theirs))
        ),
        "all three meters rolled up",
        WAIT,
    )
    admin_site = only_series(await site_consumption(http, admin, shared, lo, hi))
    assert close(admin_site["points"][0]["value"], everything)

    seen = only_series(await site_consumption(http, viewer, shared, lo, hi))
    assert close(seen["points"][0]["value"], math.fsum(mine))
    assert close(seen["points"][0]["peakDemand"], 8.0 * 4)
    seen_org = only_series(await org_consumption(http, viewer, lo, hi, timeZone="Europe/Berlin"))
    assert close(seen_org["points"][0]["value"], math.fsum(mine))

    period = {"startTime": iso(lo), "endTime": iso(hi)}
    params = {**period, "granularity": "GRANULARITY_DAY"}
    for account, site in ((viewer, hidden), (stranger, hidden), (stranger, shared)):
        for path, query in (
            (f"/v1/sites/{site}/consumption", params),
            (f"/v1/sites/{site}/summary", period),
        ):
            response = await http.get(path, params=query, headers=account.headers)
            assert response.status_code == 404, (path, response.text)

    summary = await get_ok(
        http, viewer, f"/v1/sites/{shared}/summary", startTime=iso(lo), endTime=iso(hi)
    )
    assert close(summary["commodities"][0]["total"], math.fsum(mine))

    top = await get_ok(
        http, viewer, "/v1/consumption:top", startTime=iso(lo), endTime=iso(hi), limit=10
    )
    assert [entry["meterId"] for entry in top["meters"]] == [meter]
    assert [entry["siteId"] for entry in top["sites"]] == [shared]
    assert close(top["sites"][0]["total"], math.fsum(mine))

    export = await http.get(
        "/v1/consumption:export",
        params={**params, "format": "csv"},
        headers=viewer.headers,
    )
    assert export.status_code == 200, export.text
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [row["meter_id"] for row in rows] == [meter]
    stranger_org = await org_consumption(http, stranger, lo, hi)
    assert all(not s["points"] or all(p["value"] == 0 for p in s["points"]) for s in stranger_org)


# --- the site summary --------------------------------------------------------------------------


async def test_site_summary_matches_a_computation_over_the_readings(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    tariff = await create_tariff(http, admin, [flat_version(0.3)])
    await assign_tariff(http, admin, site, tariff["tariffId"])
    await create_emission_factor(http, admin, 0.5, "2026-01-01T00:00:00Z")
    # Two weeks: the previous period (1 to 8 June 2026) and the period (8 to 15 June).
    previous_start, start, end = (
        local_midnight(date(2026, 6, 1)),
        local_midnight(date(2026, 6, 8)),
        local_midnight(date(2026, 6, 15)),
    )
    starts = list(range(previous_start, end, QUARTER_MS))
    # A daily shape (low at night, high in office hours) with a varying part, per meter.
    hour_of = [int((t - previous_start) / HOUR_MS) % 24 for t in starts]
    a = [(0.4 if h < 7 or h >= 19 else 1.6) + 0.03 * (i % 17) for i, h in enumerate(hour_of)]
    b = [(0.2 if h < 6 or h >= 22 else 0.9) + 0.02 * (i % 23) for i, h in enumerate(hour_of)]
    peak_index = starts.index(local_midnight(date(2026, 6, 10)) + 11 * HOUR_MS + QUARTER_MS)
    a[peak_index] += 6.0
    meters = [(await create_meter(http, admin, site))["meterId"] for _ in range(2)]
    await write_quarter_amounts(http, admin, meters[0], starts, a)
    await write_quarter_amounts(http, admin, meters[1], starts, b)
    both = added(a, b)

    in_period = [i for i, t in enumerate(starts) if start <= t < end]
    total = math.fsum(both[i] for i in in_period)
    previous = math.fsum(both[i] for i, t in enumerate(starts) if t < start)
    hourly = sum_by(
        [starts[i] for i in in_period], [both[i] for i in in_period], lambda t: t - t % HOUR_MS
    )
    assert len(hourly) == 168
    baseload = float(np.percentile(list(hourly.values()), 5))  # kWh in an hour = average kW
    peak = max(in_period, key=lambda i: both[i])
    assert peak == peak_index

    async def summary() -> dict[str, Any]:
        return await get_ok(
            http, admin, f"/v1/sites/{site}/summary", startTime=iso(start), endTime=iso(end)
        )

    found = await wait_for(
        summary,
        lambda s: (
            len(s.get("commodities", [])) == 1
            and close(s["commodities"][0]["total"], total)
            and close(s["commodities"][0]["previousTotal"], previous)
            and close(s["commodities"][0].get("cost"), total * 0.3)
        ),
        "the summary of two complete, priced weeks",
        WAIT,
    )
    assert found["siteId"] == site
    assert found["startTime"] == iso(start)
    assert found["endTime"] == iso(end)
    [electricity] = found["commodities"]
    print(f"summary: {electricity}")
    assert electricity["commodity"] == "COMMODITY_ELECTRICITY"
    assert electricity["unit"] == "kWh"
    assert electricity["exported"] == 0
    assert close(electricity["peakDemand"], both[peak] * 4)
    assert electricity["peakTime"] == iso(starts[peak])
    assert close(electricity["baseload"], baseload)
    assert electricity["currencyCode"] == "EUR"
    assert close(electricity["co2Kg"], total * 0.5)
    assert close(electricity["change"], (total - previous) / previous)
    assert electricity["completeness"] == pytest.approx(1.0)

    # The week before has nothing before it: previous total 0 and no change.
    first_week = await get_ok(
        http,
        admin,
        f"/v1/sites/{site}/summary",
        startTime=iso(previous_start),
        endTime=iso(start),
    )
    [earlier] = first_week["commodities"]
    assert close(earlier["total"], previous)
    assert earlier["previousTotal"] == 0
    assert "change" not in earlier


# --- top consumers -----------------------------------------------------------------------------


async def test_top_consumers_are_the_largest_meters_and_sites_per_commodity(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    north = (await create_site(http, admin, name="North"))["siteId"]
    south = (await create_site(http, admin, name="South"))["siteId"]
    day = date(2026, 6, 17)
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    hourly = {"expectedInterval": "3600s"}
    # (site, totals over the day, meter fields)
    plan: dict[str, tuple[str, float, dict[str, str]]] = {
        "e1": (north, 50.0, {}),
        "e2": (north, 20.0, {}),
        "g1": (north, 5.0, {"commodity": "COMMODITY_GAS", "unit": "m3"}),
        "x1": (north, 100.0, {"direction": "FLOW_DIRECTION_EXPORT"}),
        "e3": (south, 40.0, {}),
        "e4": (south, 35.0, {}),
    }
    ids: dict[str, str] = {}
    times = [lo + i * HOUR_MS for i in range(25)]
    for name, (site, day_total, fields) in plan.items():
        ids[name] = (await create_meter(http, admin, site, name=name, **hourly, **fields))[
            "meterId"
        ]
        values = [1000.0 + day_total * i / 24 for i in range(25)]
        await write_readings(http, admin, ids[name], times, values)
    names = {meter_id: name for name, meter_id in ids.items()}

    async def top(**params: Any) -> dict[str, Any]:
        return await get_ok(
            http, admin, "/v1/consumption:top", startTime=iso(lo), endTime=iso(hi), **params
        )

    def ranking(entries: list[dict[str, Any]], commodity: str, key: str) -> list[tuple[str, float]]:
        return [(e[key], round(e["total"], 6)) for e in entries if e["commodity"] == commodity]

    def top_two(found: dict[str, Any]) -> list[str]:
        electricity = ranking(found.get("meters", []), "COMMODITY_ELECTRICITY", "meterId")
        return [names.get(meter, meter) for meter, _ in electricity]

    found = await wait_for(
        lambda: top(limit=2),
        lambda t: (
            top_two(t) == ["e1", "e3"]
            and ranking(t.get("sites", []), "COMMODITY_ELECTRICITY", "siteId")
            == [(south, 75.0), (north, 70.0)]
        ),
        "the top two electricity meters and sites",
        WAIT,
    )
    assert ranking(found["meters"], "COMMODITY_ELECTRICITY", "meterId") == [
        (ids["e1"], 50.0),
        (ids["e3"], 40.0),
    ]
    assert ranking(found["meters"], "COMMODITY_GAS", "meterId") == [(ids["g1"], 5.0)]
    assert ids["x1"] not in {e["meterId"] for e in found["meters"]}  # import only
    assert {e["siteId"] for e in found["meters"] if e["meterId"] == ids["e3"]} == {south}
    assert {e["unit"] for e in found["meters"] if e["commodity"] == "COMMODITY_GAS"} == {"m3"}
    assert ranking(found["sites"], "COMMODITY_ELECTRICITY", "siteId") == [
        (south, 75.0),
        (north, 70.0),
    ]
    assert ranking(found["sites"], "COMMODITY_GAS", "siteId") == [(north, 5.0)]
    assert all(not e.get("meterId") for e in found["sites"])

    # limit 0 means 10: every meter.
    assert top_two(await top()) == ["e1", "e3", "e4", "e2"]
    one = await top(limit=1)
    assert ranking(one["meters"], "COMMODITY_ELECTRICITY", "meterId") == [(ids["e1"], 50.0)]
    assert ranking(one["sites"], "COMMODITY_ELECTRICITY", "siteId") == [(south, 75.0)]
    gas = await top(commodity="COMMODITY_GAS")
    assert {e["commodity"] for e in gas["meters"] + gas["sites"]} == {"COMMODITY_GAS"}
    for limit in (101, -1):
        response = await http.get(
            "/v1/consumption:top",
            params={"startTime": iso(lo), "endTime": iso(hi), "limit": limit},
            headers=admin.headers,
        )
        assert response.status_code == 400, response.text
        assert "limit" in violations(response)


# --- CSV export --------------------------------------------------------------------------------


def parse_csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.reader(io.StringIO(response.text))
    header = next(reader)
    assert header == CSV_HEADER
    return [dict(zip(header, row, strict=True)) for row in reader if row]


async def test_csv_export_has_one_row_per_meter_and_bucket(http: httpx.AsyncClient) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    tariff = await create_tariff(http, admin, [flat_version(0.2)])
    await assign_tariff(http, admin, site, tariff["tariffId"])
    await create_emission_factor(http, admin, 0.4, "2026-01-01T00:00:00Z")
    first, last = date(2026, 6, 15), date(2026, 6, 17)
    starts = quarter_starts(first, last)
    meters = sorted([(await create_meter(http, admin, site))["meterId"] for _ in range(2)])
    amounts = [pattern(len(starts), 0.3, 0.1, 5), pattern(len(starts), 0.7, 0.05, 9)]
    for meter, values in zip(meters, amounts, strict=True):
        await write_quarter_amounts(http, admin, meter, starts, values)
    lo, hi = local_midnight(first), local_midnight(last + timedelta(days=1))
    expected = [sum_by(starts, values, lambda t: local_day_start(t, BERLIN)) for values in amounts]

    async def priced_days() -> list[dict[str, Any]]:
        return [await consumption(http, admin, meter, lo, hi) for meter in meters]

    await wait_for(
        priced_days,
        lambda found: all(
            same_values(values_by_start(series), days)
            and all(p.get("cost") is not None for p in series["points"])
            for series, days in zip(found, expected, strict=True)
        ),
        "priced meter days",
        WAIT,
    )

    params = {
        "startTime": iso(lo),
        "endTime": iso(hi),
        "granularity": "GRANULARITY_DAY",
        "format": "csv",
    }
    rows = parse_csv(
        await http.get(
            "/v1/consumption:export", params={**params, "siteId": site}, headers=admin.headers
        )
    )
    assert [row["meter_id"] for row in rows] == [meters[0]] * 3 + [meters[1]] * 3
    assert {row["site_id"] for row in rows} == {site}
    for i, meter in enumerate(meters):
        series = await consumption(http, admin, meter, lo, hi)
        mine = [row for row in rows if row["meter_id"] == meter]
        assert [row["start_time"] for row in mine] == [p["startTime"] for p in series["points"]]
        assert [row["end_time"] for row in mine] == [p["endTime"] for p in series["points"]]
        assert mine[0]["start_time"] == "2026-06-14T22:00:00Z"
        for row, point in zip(mine, series["points"], strict=True):
            assert close(float(row["value"]), expected[i][parse_ms(row["start_time"])])
            assert close(float(row["value"]), point["value"])
            assert close(float(row["cost"]), point["value"] * 0.2)
            assert close(float(row["co2_kg"]), point["value"] * 0.4)
            assert row["unit"] == "kWh"
            assert row["currency"] == "EUR"
            assert float(row["completeness"]) == pytest.approx(1.0)

    # One meter, by hour; and everything the caller sees (no filter) is the same as the site.
    hours = parse_csv(
        await http.get(
            "/v1/consumption:export",
            params={**params, "meterId": meters[1], "granularity": "GRANULARITY_HOUR"},
            headers=admin.headers,
        )
    )
    assert len(hours) == 72
    assert {row["meter_id"] for row in hours} == {meters[1]}
    assert [row["start_time"] for row in hours] == sorted(row["start_time"] for row in hours)
    assert close(math.fsum(float(row["value"]) for row in hours), math.fsum(amounts[1]))
    unfiltered = parse_csv(
        await http.get("/v1/consumption:export", params=params, headers=admin.headers)
    )
    assert unfiltered == rows
    no_format = {k: v for k, v in params.items() if k != "format"}
    assert (
        parse_csv(
            await http.get(
                "/v1/consumption:export",
                params={**no_format, "siteId": site},
                headers=admin.headers,
            )
        )
        == rows
    )


async def test_csv_export_of_a_year_of_days_for_two_meters(http: httpx.AsyncClient) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    first = date(2025, 1, 1)
    days = [first + timedelta(days=i) for i in range(366)]  # up to 1 January 2026
    times = [local_midnight(d) for d in days]
    meters = sorted(
        [
            (await create_meter(http, admin, site, expectedInterval="86400s"))["meterId"]
            for _ in range(2)
        ]
    )
    for k, meter in enumerate(meters):
        values = [10.0 * k + 5.0 * i + (i % 7) * 0.5 for i in range(len(times))]
        await write_readings(http, admin, meter, times, values)
    year_total = values[-1] - values[0]  # the same for both meters
    lo, hi = times[0], times[-1]
    await wait_for(
        lambda: org_consumption(http, admin, lo, hi, "GRANULARITY_MONTH", timeZone="Europe/Berlin"),
        lambda s: (
            len(s) == 1 and close(math.fsum(p["value"] for p in s[0]["points"]), 2 * year_total)
        ),
        "a year of two meters rolled up",
        WAIT * 2,
    )
    async with http.stream(
        "GET",
        "/v1/consumption:export",
        params={
            "siteId": site,
            "startTime": iso(lo),
            "endTime": iso(hi),
            "granularity": "GRANULARITY_DAY",
            "format": "csv",
        },
        headers=admin.headers,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        text = "".join([chunk async for chunk in response.aiter_text()])
    reader = csv.reader(io.StringIO(text))
    assert next(reader) == CSV_HEADER
    rows = [row for row in reader if row]
    assert len(rows) == 2 * 365
    assert [row[0] for row in rows] == [m for m in meters for _ in range(365)]
    for meter in meters:
        mine = [row for row in rows if row[0] == meter]
        assert mine[0][2] == iso(times[0])
        assert mine[-1][3] == iso(times[-1])
        assert close(math.fsum(float(row[4]) for row in mine), year_total)


# --- bad input ---------------------------------------------------------------------------------

START, END = "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z"
RANGE = {"startTime": START, "endTime": END, "granularity": "GRANULARITY_DAY"}
# Bad inputs common to the consumption queries: (params, a field the violation may name).
RANGE_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"endTime": END, "granularity": "GRANULARITY_DAY"}, {"start_time"}),
    ({"startTime": START, "granularity": "GRANULARITY_DAY"}, {"end_time"}),
    ({**RANGE, "endTime": START}, {"end_time", "start_time"}),
    ({**RANGE, "endTime": "2026-05-01T00:00:00Z"}, {"end_time", "start_time"}),
    ({"startTime": START, "endTime": END}, {"granularity"}),
    (
        {"startTime": "2000-01-01T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"}
        | {"granularity": "GRANULARITY_QUARTER_HOUR"},
        {"end_time", "start_time", "granularity"},
    ),
    ({**RANGE, "timeZone": "Mars/Olympus_Mons"}, {"time_zone"}),
]


async def expect_bad(
    http: httpx.AsyncClient,
    account: Account,
    path: str,
    cases: list[tuple[dict[str, Any], set[str]]],
) -> None:
    for params, fields in cases:
        response = await http.get(path, params=params, headers=account.headers)
        assert response.status_code == 400, (
            f"{path} {params}: {response.status_code} {response.text}"
        )
        named = set(violations(response))
        assert named & fields, f"{path} {params}: violations {named}, expected one of {fields}"


async def test_bad_input_is_400_with_field_violations_for_every_query(
    http: httpx.AsyncClient,
) -> None:
    admin = await setup_org(http)
    site = (await create_site(http, admin))["siteId"]
    meter = (await create_meter(http, admin, site))["meterId"]
    malformed = "not-a-uuid"

    await expect_bad(http, admin, f"/v1/meters/{meter}/consumption", RANGE_CASES)
    await expect_bad(http, admin, f"/v1/meters/{malformed}/consumption", [(RANGE, {"meter_id"})])
    await expect_bad(http, admin, f"/v1/sites/{site}/consumption", RANGE_CASES)
    await expect_bad(http, admin, f"/v1/sites/{malformed}/consumption", [(RANGE, {"site_id"})])
    await expect_bad(http, admin, "/v1/consumption", RANGE_CASES)
    await expect_bad(
        http,
        admin,
        "/v1/consumption:export",
        [({**params, "siteId": site}, fields) for params, fields in RANGE_CASES]
        + [
            ({**RANGE, "meterId": meter, "siteId": site}, {"meter_id", "site_id"}),
            ({**RANGE, "meterId": meter, "format": "xml"}, {"format"}),
            ({**RANGE, "meterId": malformed}, {"meter_id"}),
            ({**RANGE, "siteId": malformed}, {"site_id"}),
        ],
    )
    summary_range = {"startTime": START, "endTime": END}
    await expect_bad(
        http,
        admin,
        f"/v1/sites/{site}/summary",
        [
            ({"endTime": END}, {"start_time"}),
            ({"startTime": START}, {"end_time"}),
            ({"startTime": END, "endTime": START}, {"end_time", "start_time"}),
        ],
    )
    await expect_bad(http, admin, f"/v1/sites/{malformed}/summary", [(summary_range, {"site_id"})])
    await expect_bad(
        http,
        admin,
        "/v1/consumption:top",
        [
            ({"endTime": END}, {"start_time"}),
            ({"startTime": START, "endTime": START}, {"end_time", "start_time"}),
            ({**summary_range, "limit": 101}, {"limit"}),
            ({**summary_range, "limit": -1}, {"limit"}),
        ],
    )
    await expect_bad(
        http,
        admin,
        f"/v1/meters/{meter}/forecast",
        [({"horizonHours": 721}, {"horizon_hours"}), ({"horizonHours": -1}, {"horizon_hours"})],
    )
    await expect_bad(http, admin, f"/v1/meters/{malformed}/forecast", [({}, {"meter_id"})])
    await expect_bad(
        http,
        admin,
        "/v1/anomalies",
        [
            ({"pageSize": 1001}, {"page_size"}),
            ({"pageSize": -1}, {"page_size"}),
            ({"meterId": malformed}, {"meter_id"}),
            ({"siteId": malformed}, {"site_id"}),
            ({"startTime": END, "endTime": START}, {"end_time", "start_time"}),
            ({"pageToken": "garbage!"}, {"page_token"}),
        ],
    )
