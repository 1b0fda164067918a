"""Cost and CO2 end to end: readings written over REST, priced by the tariffs and emission
factors managed over REST, read back from GET /v1/meters/{id}/consumption and compared with
a straightforward computation in the test (per quarter hour, on the local calendar)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.analytics_steps import (
    BERLIN,
    QUARTER_MS,
    assign_tariff,
    consumption,
    create_emission_factor,
    create_tariff,
    flat_version,
    iso,
    local_day,
    local_midnight,
    quarter_starts,
    write_readings,
)
from tests.e2e.device_steps import create_meter, create_site
from tests.e2e.helpers import Account, eventually, register

WAIT = 60
INTERVAL_METER = {"registerType": "REGISTER_TYPE_INTERVAL", "expectedInterval": "900s"}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def by_day(starts: Sequence[int], amounts: Sequence[float]) -> dict[date, float]:
    days: dict[date, list[float]] = defaultdict(list)
    for start, amount in zip(starts, amounts, strict=True):
        days[local_day(start)].append(amount)
    return {day: math.fsum(values) for day, values in days.items()}


def daily(series: dict[str, Any], field: str) -> dict[date, float | None]:
    """A DAY series' points as local day → field (None when unset)."""
    return {
        local_day(int(datetime.fromisoformat(p["startTime"]).timestamp() * 1000)): p.get(field)
        for p in series["points"]
    }


def matches(actual: dict[date, float | None], expected: dict[date, float | None]) -> bool:
    return set(actual) == set(expected) and all(close(actual[d], expected[d]) for d in expected)


async def cumulative_meter(
    http: httpx.AsyncClient, admin: Account, site_id: str, starts: list[int], **fields: str
) -> tuple[str, list[float]]:
    """A cumulative meter read at every quarter-hour boundary of `starts` (and after the last
    one), consuming a varying amount per quarter hour; returns its id and those amounts."""
    meter = (await create_meter(http, admin, site_id, **fields))["meterId"]
    amounts = [0.5 + (i % 11) * 0.1 for i in range(len(starts))]
    values = [100.0]
    for amount in amounts:
        values.append(values[-1] + amount)
    await write_readings(http, admin, meter, [*starts, starts[-1] + QUARTER_MS], values)
    return meter, amounts


async def days_of(
    http: httpx.AsyncClient, admin: Account, meter: str, first: date, last: date
) -> dict[str, Any]:
    return await consumption(
        http, admin, meter, local_midnight(first), local_midnight(last + timedelta(days=1))
    )


async def wait_for_days(
    http: httpx.AsyncClient,
    admin: Account,
    meter: str,
    first: date,
    last: date,
    field: str,
    expected: dict[date, float | None],
) -> dict[str, Any]:
    """Waits until the meter's DAY points carry the expected field values; returns the series."""
    found: dict[str, Any] = {}

    async def arrived() -> bool:
        found.update(await days_of(http, admin, meter, first, last))
        return matches(daily(found, field), expected)

    try:
        await eventually(arrived, wait_seconds=WAIT)
    except TimeoutError:
        raise AssertionError(f"{field}: expected {expected}, got {daily(found, field)}") from None
    return found


# --- a TOU tariff whose prices change on the 15th, and an emission factor change ---------------


@dataclass(frozen=True)
class Tou:
    start_ms: int
    end_ms: int | None
    peak: float  # weekdays 08:00-20:00
    off_peak: float  # other weekday hours (the flat price)
    weekend: float  # weekends and holidays, all day
    holidays: tuple[str, ...] = ()

    def version(self) -> dict[str, Any]:
        version: dict[str, Any] = {
            "effectiveFrom": iso(self.start_ms),
            "flatPrice": self.off_peak,
            "windows": [
                {
                    "price": self.peak,
                    "startMinute": 8 * 60,
                    "endMinute": 20 * 60,
                    "dayTypes": ["DAY_TYPE_WEEKDAY"],
                },
                {"price": self.weekend, "dayTypes": ["DAY_TYPE_WEEKEND", "DAY_TYPE_HOLIDAY"]},
            ],
            "holidays": list(self.holidays),
        }
        if self.end_ms is not None:
            version["effectiveTo"] = iso(self.end_ms)
        return version

    def covers(self, moment_ms: int) -> bool:
        return self.start_ms <= moment_ms and (self.end_ms is None or moment_ms < self.end_ms)

    def price(self, moment_ms: int) -> float:
        local = datetime.fromtimestamp(moment_ms / 1000, BERLIN)
        if local.date().isoformat() in self.holidays or local.weekday() >= 5:
            return self.weekend
        return self.peak if 8 <= local.hour < 20 else self.off_peak


async def test_tou_price_change_on_the_15th_and_emission_factor_change(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    change = local_midnight(date(2026, 3, 15))
    versions = [
        Tou(local_midnight(date(2026, 3, 1)), change, 0.40, 0.20, 0.15, ("2026-03-13",)),
        Tou(change, None, 0.50, 0.25, 0.18),
    ]
    tariff = await create_tariff(http, admin, [v.version() for v in versions], name="TOU")
    await assign_tariff(http, admin, site, tariff["tariffId"])
    # The grid's emission factor changes on the 16th.
    factor_change = local_midnight(date(2026, 3, 16))
    await create_emission_factor(
        http, admin, 0.4, iso(local_midnight(date(2026, 3, 1))), iso(factor_change)
    )
    await create_emission_factor(http, admin, 0.3, iso(factor_change))

    # Thursday 12 to Tuesday 17 March: Friday 13 is a holiday of the first version.
    first, last = date(2026, 3, 12), date(2026, 3, 17)
    starts = quarter_starts(first, last)
    meter, amounts = await cumulative_meter(http, admin, site, starts)

    def price(start: int) -> float:
        return next(v for v in versions if v.covers(start)).price(start)

    expected_cost = by_day(starts, [a * price(s) for s, a in zip(starts, amounts, strict=True)])
    expected_co2 = by_day(
        starts,
        [a * (0.4 if s < factor_change else 0.3) for s, a in zip(starts, amounts, strict=True)],
    )
    series = await wait_for_days(http, admin, meter, first, last, "cost", dict(expected_cost))
    assert series["currencyCode"] == "EUR"
    assert matches(daily(series, "co2Kg"), dict(expected_co2))
    # A spot check by hand: Friday the 13th, a holiday, is all at the old weekend price.
    friday = [a for s, a in zip(starts, amounts, strict=True) if local_day(s) == date(2026, 3, 13)]
    assert close(expected_cost[date(2026, 3, 13)], math.fsum(friday) * 0.15)

    # Hours and ISO weeks sum their quarter hours' cost.
    hours = await consumption(
        http,
        admin,
        meter,
        local_midnight(date(2026, 3, 16)),
        local_midnight(date(2026, 3, 17)),
        "GRANULARITY_HOUR",
    )
    assert len(hours["points"]) == 24
    assert close(math.fsum(p["cost"] for p in hours["points"]), expected_cost[date(2026, 3, 16)])
    weeks = await consumption(
        http,
        admin,
        meter,
        local_midnight(date(2026, 3, 9)),
        local_midnight(date(2026, 3, 23)),
        "GRANULARITY_WEEK",
    )
    assert all(
        close(p["cost"], c) for p, c in zip(weeks["points"], _weekly(expected_cost), strict=True)
    )


def _weekly(days: dict[date, float]) -> list[float]:
    weeks: dict[date, list[float]] = defaultdict(list)
    for day, amount in days.items():
        weeks[day - timedelta(days=day.weekday())].append(amount)
    return [math.fsum(weeks[monday]) for monday in sorted(weeks)]


# --- tiered blocks per billing month -----------------------------------------------------------


def tiered(
    starts: Sequence[int], amounts: Sequence[float], tiers: Sequence[tuple[float | None, float]]
) -> list[float]:
    """Cost per quarter hour under blocks (up_to, price) counted per local calendar month."""
    costs = []
    month, used = None, 0.0
    for start, amount in zip(starts, amounts, strict=True):
        local = datetime.fromtimestamp(start / 1000, BERLIN)
        if (local.year, local.month) != month:
            month, used = (local.year, local.month), 0.0
        cost, remaining, position = 0.0, amount, used
        for up_to, price in tiers:
            room = remaining if up_to is None else max(0.0, min(remaining, up_to - position))
            cost += room * price
            position += room
            remaining -= room
        costs.append(cost)
        used += amount
    return costs


async def test_tiered_blocks_per_billing_month_and_a_late_day(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    tiers = [(30.0, 0.10), (None, 0.30)]
    tariff = await create_tariff(
        http,
        admin,
        [
            flat_version(
                0.99,
                "2026-01-01T00:00:00Z",
                tiers=[{"price": 0.10, "upTo": 30}, {"price": 0.30}],
            )
        ],
        name="Blocks",
    )
    await assign_tariff(http, admin, site, tariff["tariffId"])
    meter = (await create_meter(http, admin, site, **INTERVAL_METER))["meterId"]

    # Half a kWh per quarter hour over 29 April to 2 May (48 kWh a day); an interval reading
    # at the end of its quarter hour. 29 April arrives late, all but its last quarter hour.
    first, last = date(2026, 4, 29), date(2026, 5, 2)
    starts = quarter_starts(first, last)
    late = [s for s in starts if s < local_midnight(date(2026, 4, 30)) - QUARTER_MS]
    on_time = starts[len(late) :]
    await write_readings(
        http, admin, meter, [s + QUARTER_MS for s in on_time], [0.5] * len(on_time)
    )

    def expected(present: list[int]) -> dict[date, float | None]:
        amounts = [0.5 if s in present else 0.0 for s in starts]
        return dict(by_day(starts, tiered(starts, amounts, tiers)))

    before = expected(on_time)
    # By hand: 30 April has 29.5 kWh left in the cheap block, 1 May starts a new month.
    assert close(before[date(2026, 4, 30)], 29.5 * 0.10 + 18.5 * 0.30)
    assert close(before[date(2026, 5, 1)], 30 * 0.10 + 18 * 0.30)
    await wait_for_days(http, admin, meter, first, last, "cost", before)

    # The late day fills April's cheap block: 30 April, not recomputed itself, is repriced.
    await write_readings(http, admin, meter, [s + QUARTER_MS for s in late], [0.5] * len(late))
    after = expected(starts)
    assert close(after[date(2026, 4, 30)], 48 * 0.30)
    await wait_for_days(http, admin, meter, first, last, "cost", after)


# --- a standing charge on the 23- and 25-hour days --------------------------------------------


async def test_standing_charge_once_per_day_on_dst_days(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    tariff = await create_tariff(
        http, admin, [flat_version(0.10, standingChargePerDay=1.0)], name="Standing"
    )
    await assign_tariff(http, admin, site, tariff["tariffId"])
    meter = (await create_meter(http, admin, site, **INTERVAL_METER))["meterId"]
    for day, hours in ((date(2026, 3, 29), 23), (date(2026, 10, 25), 25)):
        starts = quarter_starts(day, day)
        assert len(starts) == 4 * hours
        await write_readings(
            http, admin, meter, [s + QUARTER_MS for s in starts], [1.0] * len(starts)
        )
        # One kWh per quarter hour at 0.10, plus one standing charge; the next day, recomputed
        # for the reading at its midnight, consumed nothing and carries its charge alone.
        expected: dict[date, float | None] = {
            day: 1.0 + 4 * hours * 0.10,
            day + timedelta(days=1): 1.0,
        }
        await wait_for_days(http, admin, meter, day, day + timedelta(days=1), "cost", expected)
        hourly = await consumption(
            http,
            admin,
            meter,
            local_midnight(day),
            local_midnight(day + timedelta(days=1)),
            "GRANULARITY_HOUR",
        )
        assert len(hourly["points"]) == hours
        assert close(math.fsum(p["cost"] for p in hourly["points"]), 1.0 + 4 * hours * 0.10)


async def test_standing_charge_assigned_later_counts_for_partly_measured_days(
    http: httpx.AsyncClient,
) -> None:
    """Readings that cover only part of a day, stored before the site had a tariff: once a
    tariff with a standing charge is assigned, the day still carries the whole charge."""
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    day = date(2026, 2, 10)
    morning = local_midnight(day) + 10 * 3_600_000
    starts = list(range(morning, morning + 4 * 3_600_000, QUARTER_MS))  # 10:00-14:00
    meter = (await create_meter(http, admin, site, **INTERVAL_METER))["meterId"]
    await write_readings(http, admin, meter, [s + QUARTER_MS for s in starts], [1.0] * 16)
    await wait_for_days(http, admin, meter, day, day, "value", {day: 16.0})

    tariff = await create_tariff(
        http, admin, [flat_version(0.10, standingChargePerDay=1.0)], name="Standing later"
    )
    await assign_tariff(http, admin, site, tariff["tariffId"])
    await wait_for_days(http, admin, meter, day, day, "cost", {day: 1.0 + 16 * 0.10})


# --- repricing after changes ---------------------------------------------------------------


async def test_changes_reprice_stored_rollups(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    tariff = await create_tariff(http, admin, [flat_version(0.20)], name="Flat")
    assignment = await assign_tariff(http, admin, site, tariff["tariffId"])
    first, last = date(2026, 6, 1), date(2026, 6, 3)
    starts = quarter_starts(first, last)
    meter, amounts = await cumulative_meter(http, admin, site, starts)
    values = by_day(starts, amounts)

    def scaled(price: Callable[[date], float]) -> dict[date, float | None]:
        return {day: value * price(day) for day, value in values.items()}

    await wait_for_days(http, admin, meter, first, last, "cost", scaled(lambda _: 0.20))

    # A new version from 2 June: the stored days are repriced (eventually).
    second = local_midnight(date(2026, 6, 2))
    updated = await http.patch(
        f"/v1/tariffs/{tariff['tariffId']}",
        params={"updateMask": "versions"},
        headers=admin.headers,
        json={
            "etag": tariff["etag"],
            "versions": [
                flat_version(0.20) | {"effectiveTo": iso(second)},
                flat_version(0.30, iso(second)),
            ],
        },
    )
    assert updated.status_code == 200, updated.text
    await wait_for_days(
        http,
        admin,
        meter,
        first,
        last,
        "cost",
        scaled(lambda d: 0.20 if d < date(2026, 6, 2) else 0.30),
    )

    # An emission factor created afterwards prices the CO2 of what is stored.
    factor = await create_emission_factor(http, admin, 0.5, "2026-01-01T00:00:00Z")
    await wait_for_days(http, admin, meter, first, last, "co2Kg", scaled(lambda _: 0.5))
    month = await consumption(
        http,
        admin,
        meter,
        local_midnight(date(2026, 6, 1)),
        local_midnight(date(2026, 7, 1)),
        "GRANULARITY_MONTH",
    )
    [june] = month["points"]
    assert close(june["co2Kg"], 0.5 * math.fsum(values.values()))
    assert close(
        june["cost"],
        math.fsum(v * (0.20 if d < date(2026, 6, 2) else 0.30) for d, v in values.items()),
    )

    # Without the assignment (or the factor) nothing is priced; assigned again, it is.
    deleted = await http.delete(
        f"/v1/sites/{site}/tariffAssignments/{assignment['assignmentId']}", headers=admin.headers
    )
    assert deleted.status_code == 200, deleted.text
    await wait_for_days(http, admin, meter, first, last, "cost", dict.fromkeys(values))
    assert (await days_of(http, admin, meter, first, last)).get("currencyCode", "") == ""
    removed = await http.delete(
        f"/v1/emission-factors/{factor['emissionFactorId']}", headers=admin.headers
    )
    assert removed.status_code == 200, removed.text
    await wait_for_days(http, admin, meter, first, last, "co2Kg", dict.fromkeys(values))
    await assign_tariff(http, admin, site, tariff["tariffId"])
    await wait_for_days(
        http,
        admin,
        meter,
        first,
        last,
        "cost",
        scaled(lambda d: 0.20 if d < date(2026, 6, 2) else 0.30),
    )
    # Deleting the tariff removes its assignment: unpriced again.
    gone = await http.delete(f"/v1/tariffs/{tariff['tariffId']}", headers=admin.headers)
    assert gone.status_code == 200, gone.text
    await wait_for_days(http, admin, meter, first, last, "cost", dict.fromkeys(values))


# --- export ----------------------------------------------------------------------------------


async def test_export_meter_is_credited_at_the_feed_in_price(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    supply = await create_tariff(http, admin, [flat_version(0.30, feedInPrice=0.99)], name="Supply")
    feed_in = await create_tariff(
        http, admin, [flat_version(0.50, feedInPrice=0.08)], name="Feed-in"
    )
    await assign_tariff(http, admin, site, supply["tariffId"])
    exported = await assign_tariff(
        http, admin, site, feed_in["tariffId"], direction="FLOW_DIRECTION_EXPORT"
    )
    assert exported["direction"] == "FLOW_DIRECTION_EXPORT"
    await create_emission_factor(http, admin, 0.4, "2026-01-01T00:00:00Z")

    first, last = date(2026, 7, 6), date(2026, 7, 7)
    starts = quarter_starts(first, last)
    solar, solar_amounts = await cumulative_meter(
        http, admin, site, starts, direction="FLOW_DIRECTION_EXPORT", name="Solar"
    )
    grid, grid_amounts = await cumulative_meter(http, admin, site, starts, name="Grid")
    solar_days, grid_days = by_day(starts, solar_amounts), by_day(starts, grid_amounts)

    series = await wait_for_days(
        http,
        admin,
        solar,
        first,
        last,
        "cost",
        {day: -0.08 * value for day, value in solar_days.items()},
    )
    assert series["direction"] == "FLOW_DIRECTION_EXPORT"
    assert series["currencyCode"] == "EUR"
    assert all(p.get("co2Kg") is None for p in series["points"])
    await wait_for_days(
        http, admin, grid, first, last, "cost", {day: 0.30 * v for day, v in grid_days.items()}
    )
    await wait_for_days(
        http, admin, grid, first, last, "co2Kg", {day: 0.4 * v for day, v in grid_days.items()}
    )
