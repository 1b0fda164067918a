"""Analytics numbers end to end, against straightforward computations in the test: INTERVAL and
INSTANTANEOUS registers, counter resets and rollovers, a reading three months late, a
committed-readings event delivered twice, the analytics process killed (SIGKILL) while it works
through a backlog, and irregular readings compared with a plain pair-by-pair computation."""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from nats.aio.client import Client

from services.launcher.mesh import Mesh
from tests.e2e.analytics_steps import (
    BERLIN,
    DAY_MS,
    HOUR_MS,
    QUARTER_MS,
    close,
    consumption,
    counter,
    iso,
    local_day_start,
    local_hour_start,
    local_midnight,
    only_series,
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
from tests.e2e.helpers import Account, eventually, find_event, register

WAIT = 60


def local_week_start(moment_ms: int, zone: ZoneInfo = BERLIN) -> int:
    day = datetime.fromtimestamp(moment_ms / 1000, zone).date()
    return local_midnight(day - timedelta(days=day.weekday()), zone)


def local_month_start(moment_ms: int, zone: ZoneInfo = BERLIN) -> int:
    day = datetime.fromtimestamp(moment_ms / 1000, zone).date()
    return local_midnight(day.replace(day=1), zone)


async def new_site(http: httpx.AsyncClient, zone: str = "Europe/Berlin") -> tuple[Account, str]:
    admin = await register(http, "Analytics Correctness")
    site = await create_site(http, admin, timeZone=zone)
    return admin, site["siteId"]


async def wait_for_series(
    http: httpx.AsyncClient,
    admin: Account,
    meter: str,
    lo: int,
    hi: int,
    granularity: str,
    expected: dict[int, float],
    wait_seconds: float = WAIT,
) -> dict[str, Any]:
    return await wait_for(
        lambda: consumption(http, admin, meter, lo, hi, granularity),
        lambda s: same_values(values_by_start(s), expected),
        f"{granularity} values of meter {meter}",
        wait_seconds,
    )


# --- register types ----------------------------------------------------------------------------


async def test_interval_meter_sums_each_reading_into_the_interval_it_ends(
    http: httpx.AsyncClient,
) -> None:
    admin, site = await new_site(http)
    meter = (
        await create_meter(
            http, admin, site, registerType="REGISTER_TYPE_INTERVAL", expectedInterval="900s"
        )
    )["meterId"]
    day = date(2026, 6, 20)
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    # The 00:15 reading is the amount of 00:00-00:15; the one at midnight belongs to the day
    # before, the one at the next midnight to this day.
    ends = [lo + i * QUARTER_MS for i in range(97)]
    values = [99.0] + [0.2 + (i % 9) * 0.05 for i in range(96)]
    await write_readings(http, admin, meter, ends, values)
    interval_starts = [end - QUARTER_MS for end in ends]

    expected_days = sum_by(interval_starts, values, lambda t: local_day_start(t))
    assert expected_days[lo - DAY_MS] == 99.0
    series = await wait_for_series(
        http, admin, meter, lo - DAY_MS, hi, "GRANULARITY_DAY", expected_days
    )
    assert series["points"][1]["completeness"] == pytest.approx(1.0)
    assert series["points"][1]["unit"] == "kWh"
    hours = await consumption(http, admin, meter, lo, hi, "GRANULARITY_HOUR")
    expected_hours = sum_by(interval_starts[1:], values[1:], lambda t: t - t % HOUR_MS)
    assert same_values(values_by_start(hours), expected_hours)
    quarters = await consumption(http, admin, meter, lo, lo + HOUR_MS, "GRANULARITY_QUARTER_HOUR")
    assert [p["value"] for p in quarters["points"]] == pytest.approx(values[1:5])


async def test_instantaneous_power_is_integrated_with_its_peak_demand(
    http: httpx.AsyncClient,
) -> None:
    admin, site = await new_site(http)
    meter = (
        await create_meter(http, admin, site, registerType="REGISTER_TYPE_INSTANTANEOUS", unit="kW")
    )["meterId"]
    day = date(2026, 6, 21)
    lo, hi = local_midnight(day), local_midnight(day + timedelta(days=1))
    times = [lo + i * QUARTER_MS for i in range(97)]
    power = [5.0 + 3.0 * math.sin(i / 7) + (i % 4) for i in range(97)]
    power[50] = 40.0  # a short spike: the quarters on either side average 40 and the neighbour
    await write_readings(http, admin, meter, times, power)
    # Trapezoid rule: a quarter hour between samples p0 and p1 is (p0 + p1) / 2 kW for 0.25 h.
    average = [(p0 + p1) / 2 for p0, p1 in itertools.pairwise(power)]
    energy = [kw / 4 for kw in average]

    await wait_for_series(http, admin, meter, lo, hi, "GRANULARITY_DAY", {lo: math.fsum(energy)})
    hours = await consumption(http, admin, meter, lo, hi, "GRANULARITY_HOUR")
    assert hours["points"][0]["unit"] == "kWh"
    assert same_values(
        values_by_start(hours), sum_by(times[:-1], energy, lambda t: t - t % HOUR_MS)
    )
    for point in hours["points"]:
        start = parse_ms(point["startTime"])
        inside = [i for i, t in enumerate(times[:-1]) if start <= t < start + HOUR_MS]
        best = max(inside, key=lambda i: (average[i], -i))
        assert close(point["peakDemand"], average[best]), point
        assert point["peakTime"] == iso(times[best]), point
    [whole_day] = (await consumption(http, admin, meter, lo, hi))["points"]
    best = max(range(96), key=lambda i: (average[i], -i))
    assert best in (49, 50)
    assert close(whole_day["peakDemand"], average[best])
    assert whole_day["peakTime"] == iso(times[best])


# --- counters that reset or wrap ---------------------------------------------------------------


async def test_counter_resets_and_rollovers_give_the_right_totals_and_nothing_negative(
    http: httpx.AsyncClient,
) -> None:
    admin, site = await new_site(http)
    day = date(2026, 6, 22)
    starts = quarter_starts(day, day)
    lo, hi = starts[0], starts[-1] + QUARTER_MS
    amounts = [15.0 + (i % 5) for i in range(len(starts))]  # 1,632 kWh over the day

    # A five-digit register that wraps at 100,000 in the morning.
    wraps = (await create_meter(http, admin, site, rolloverValue=100000))["meterId"]
    wrapping = [value % 100_000 for value in counter(amounts, first=99_500.0)]
    assert any(b < a for a, b in itertools.pairwise(wrapping))
    await write_readings(http, admin, wraps, [*starts, hi], wrapping)
    # A meter exchanged at 10:15: its new register starts at 0 (a reset, not consumption).
    resets = (await create_meter(http, admin, site))["meterId"]
    reset_at = 41
    exchanged = counter(amounts, first=5_000.0)
    exchanged = exchanged[:reset_at] + [v - exchanged[reset_at] for v in exchanged[reset_at:]]
    await write_readings(http, admin, resets, [*starts, hi], exchanged)
    # A register with a rollover value whose drop is no plausible wrap (50,000 → 10): a reset.
    implausible = (await create_meter(http, admin, site, rolloverValue=100000))["meterId"]
    jumped = counter(amounts, first=49_000.0)
    jumped = jumped[:reset_at] + [v - jumped[reset_at] + 10 for v in jumped[reset_at:]]
    await write_readings(http, admin, implausible, [*starts, hi], jumped)

    total = math.fsum(amounts)
    without = total - amounts[reset_at - 1]  # the quarter the reset happened in counts nothing
    for meter, expected in ((wraps, total), (resets, without), (implausible, without)):
        await wait_for_series(http, admin, meter, lo, hi, "GRANULARITY_DAY", {lo: expected})
    expected_resets = {wraps: 0, resets: 1, implausible: 1}
    reset_hour = local_hour_start(starts[reset_at], BERLIN)
    for meter, count in expected_resets.items():
        [whole_day] = (await consumption(http, admin, meter, lo, hi))["points"]
        assert whole_day.get("resetCount", 0) == count, (meter, whole_day)
        for granularity in ("GRANULARITY_QUARTER_HOUR", "GRANULARITY_HOUR"):
            points = (await consumption(http, admin, meter, lo, hi, granularity))["points"]
            assert all(p["value"] >= 0 for p in points), points
            flagged = [p["startTime"] for p in points if p.get("resetCount", 0)]
            if granularity == "GRANULARITY_HOUR":
                assert flagged == ([iso(reset_hour)] if count else []), (meter, flagged)
    hours = await consumption(http, admin, resets, lo, hi, "GRANULARITY_HOUR")
    expected_hours = sum_by(
        starts,
        [0.0 if i == reset_at - 1 else a for i, a in enumerate(amounts)],
        lambda t: local_hour_start(t, BERLIN),
    )
    assert same_values(values_by_start(hours), expected_hours)


# --- late data ---------------------------------------------------------------------------------


async def test_a_reading_three_months_late_updates_its_day_week_and_month(
    http: httpx.AsyncClient,
) -> None:
    admin, site = await new_site(http)
    meter = (
        await create_meter(
            http, admin, site, registerType="REGISTER_TYPE_INTERVAL", expectedInterval="3600s"
        )
    )["meterId"]
    # Hourly amounts from 1 January to 1 May 2026 (local), each reading timed at the end of
    # its hour; the one for 15 January 11:00-12:00 arrives after all the others.
    lo, hi = local_midnight(date(2026, 1, 1)), local_midnight(date(2026, 5, 1))
    ends = list(range(lo + HOUR_MS, hi + 1, HOUR_MS))
    values = [1.0 + (i % 5) * 0.1 + (i % 24) * 0.01 for i in range(len(ends))]
    late = ends.index(local_midnight(date(2026, 1, 15)) + 12 * HOUR_MS)
    on_time = [i for i in range(len(ends)) if i != late]
    await write_readings(
        http, admin, meter, [ends[i] for i in on_time], [values[i] for i in on_time]
    )

    def expected(key: Any, include_late: bool) -> dict[int, float]:
        keep = range(len(ends)) if include_late else on_time
        return sum_by([ends[i] - HOUR_MS for i in keep], [values[i] for i in keep], key)

    days_before = expected(local_day_start, include_late=False)
    await wait_for_series(http, admin, meter, lo, hi, "GRANULARITY_DAY", days_before)
    months = await consumption(http, admin, meter, lo, hi, "GRANULARITY_MONTH")
    assert same_values(values_by_start(months), expected(local_month_start, include_late=False))
    assert len(months["points"]) == 4
    week_lo, week_hi = local_midnight(date(2026, 1, 5)), local_midnight(date(2026, 4, 27))
    weeks_before = {
        start: value
        for start, value in expected(local_week_start, include_late=False).items()
        if week_lo <= start < week_hi
    }
    weeks = await consumption(http, admin, meter, week_lo, week_hi, "GRANULARITY_WEEK")
    assert same_values(values_by_start(weeks), weeks_before)

    await write_readings(http, admin, meter, [ends[late]], [values[late]])
    days_after = expected(local_day_start, include_late=True)
    days = await wait_for_series(http, admin, meter, lo, hi, "GRANULARITY_DAY", days_after)
    changed = [day for day in days_after if not close(days_after[day], days_before[day])]
    assert changed == [local_midnight(date(2026, 1, 15))]
    fifteenth = next(p for p in days["points"] if p["startTime"] == iso(changed[0]))
    assert fifteenth["completeness"] == pytest.approx(1.0)
    # The whole weeks (Monday 5 January to Monday 27 April): only the week of the 15th changed.
    weeks = await consumption(http, admin, meter, week_lo, week_hi, "GRANULARITY_WEEK")
    weeks_after = {
        start: value
        for start, value in expected(local_week_start, include_late=True).items()
        if week_lo <= start < week_hi
    }
    assert same_values(values_by_start(weeks), weeks_after)
    assert [k for k in weeks_after if not close(weeks_after[k], weeks_before[k])] == [
        local_midnight(date(2026, 1, 12))
    ]
    months = await consumption(http, admin, meter, lo, hi, "GRANULARITY_MONTH")
    assert same_values(values_by_start(months), expected(local_month_start, include_late=True))
    january = next(p for p in months["points"] if p["startTime"] == iso(lo))
    assert close(january["value"], expected(local_month_start, True)[lo])


# --- the same event twice ----------------------------------------------------------------------


async def test_a_committed_readings_event_delivered_twice_changes_nothing(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin, site = await new_site(http)
    meter = (await create_meter(http, admin, site))["meterId"]
    # Saturday 30 and Sunday 31 May 2026: the data ends with a week and a month.
    first, last = date(2026, 5, 30), date(2026, 5, 31)
    starts = quarter_starts(first, last)
    amounts = [0.5 + (i % 13) * 0.07 for i in range(len(starts))]
    await write_quarter_amounts(http, admin, meter, starts, amounts)
    lo, hi = starts[0], starts[-1] + QUARTER_MS
    await wait_for_series(
        http, admin, meter, lo, hi, "GRANULARITY_DAY", sum_by(starts, amounts, local_day_start)
    )
    granularities = {
        "GRANULARITY_QUARTER_HOUR": (lo, hi),
        "GRANULARITY_HOUR": (lo, hi),
        "GRANULARITY_DAY": (lo, hi),
        "GRANULARITY_WEEK": (local_midnight(date(2026, 5, 25)), hi),
        "GRANULARITY_MONTH": (local_midnight(date(2026, 5, 1)), hi),
    }

    async def snapshot() -> dict[str, dict[str, Any]]:
        return {
            g: await consumption(http, admin, meter, a, b, g) for g, (a, b) in granularities.items()
        }

    before = await snapshot()
    assert close(before["GRANULARITY_MONTH"]["points"][0]["value"], math.fsum(amounts))
    # The event telemetry published for these readings, published again twice (as a redelivery
    # would hand it over), without a Nats-Msg-Id so JetStream does not drop the copies.
    event = await find_event(
        nats_client, "telemetry.readings.committed", lambda e: e.get("meterId") == meter
    )
    for _ in range(2):
        await nats_client.jetstream().publish(
            "telemetry.readings.committed", json.dumps(event).encode()
        )
    # A later reading for the same meter, in June: once it is counted the copies were applied.
    await write_readings(http, admin, meter, [hi + QUARTER_MS], [counter(amounts)[-1] + 2.0])
    await wait_for_series(http, admin, meter, hi, hi + DAY_MS, "GRANULARITY_DAY", {hi: 2.0})
    assert await snapshot() == before


# --- the analytics process killed while it works through a backlog -----------------------------


async def analytics_writing(database_url: str) -> bool:
    """Whether the analytics service has a write transaction open (the rollups of a batch of
    events being stored): only used to pick the moment to kill it."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as watcher:
        cursor = await watcher.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'energymesh-analytics' AND backend_xid IS NOT NULL"
        )
        row = await cursor.fetchone()
    return bool(row and row[0])


async def test_analytics_killed_mid_batch_then_restarted_gives_exact_totals(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    admin, site = await new_site(http)
    meters = [(await create_meter(http, admin, site))["meterId"] for _ in range(6)]

    async def known() -> list[int]:
        """Analytics learns meters from the registry's events: 200 once it knows them."""
        return [
            (
                await http.get(
                    f"/v1/meters/{meter}/consumption",
                    params={
                        "startTime": "2026-01-01T00:00:00Z",
                        "endTime": "2026-01-02T00:00:00Z",
                        "granularity": "GRANULARITY_DAY",
                    },
                    headers=admin.headers,
                )
            ).status_code
            for meter in meters
        ]

    await wait_for(known, lambda codes: set(codes) == {200}, "analytics knows the meters")
    first, last = date(2026, 3, 1), date(2026, 3, 31)
    starts = quarter_starts(first, last)
    lo, hi = starts[0], starts[-1] + QUARTER_MS
    amounts = {
        meter: [0.1 + ((i * (k + 3)) % 17) * 0.03 for i in range(len(starts))]
        for k, meter in enumerate(meters)
    }

    # Analytics down while a month of readings for each meter (17,862 in all) is committed:
    # a backlog of events waits for it.
    mesh.signal_service("analytics", signal.SIGKILL)
    mesh.wait_service("analytics", timeout=10)
    try:
        for meter, values in amounts.items():
            await write_readings(http, admin, meter, [*starts, hi], counter(values))
    finally:
        mesh.restart_service("analytics")
    # Killed again while it stores the rollups of a batch of those events.
    await eventually(lambda: analytics_writing(mesh.database_url), wait_seconds=WAIT)
    mesh.signal_service("analytics", signal.SIGKILL)
    mesh.wait_service("analytics", timeout=10)
    mesh.restart_service("analytics")

    async def every_meter() -> list[dict[str, Any]]:
        return [
            await consumption(http, admin, meter, lo, hi, "GRANULARITY_MONTH") for meter in meters
        ]

    # What the killed process had fetched but not acknowledged comes back after the consumer's
    # ack wait (a minute): most of this test's time.
    await wait_for(
        every_meter,
        lambda found: all(
            same_values(values_by_start(series), sum_by(starts, amounts[m], local_month_start))
            for series, m in zip(found, meters, strict=True)
        ),
        "every meter's month exact after the restart",
        WAIT * 3,
    )
    for meter, values in amounts.items():
        days = await consumption(http, admin, meter, lo, hi)
        assert same_values(values_by_start(days), sum_by(starts, values, local_day_start))
        hours = await consumption(
            http,
            admin,
            meter,
            local_midnight(date(2026, 3, 29)),
            local_midnight(date(2026, 3, 30)),
            "GRANULARITY_HOUR",
        )
        assert len(hours["points"]) == 23
        assert same_values(
            values_by_start(hours),
            {
                k: v
                for k, v in sum_by(starts, values, lambda t: local_hour_start(t, BERLIN)).items()
                if local_midnight(date(2026, 3, 29)) <= k < local_midnight(date(2026, 3, 30))
            },
        )
    # The site's sums too.
    site_days = await site_consumption(http, admin, site, lo, hi)
    assert same_values(
        values_by_start(only_series(site_days)),
        sum_by(
            starts, [math.fsum(v) for v in zip(*amounts.values(), strict=True)], local_day_start
        ),
    )


# --- irregular readings against a plain computation --------------------------------------------


def plain_day_totals(
    times: Sequence[int],
    values: Sequence[float],
    zone: ZoneInfo,
    rollover: float | None = None,
    multiplier: float = 1.0,
) -> dict[int, float]:
    """Per local day: each pair of consecutive readings' increase (a drop: the wrap when a
    rollover value is set and the wrap is under 10 % of it, otherwise nothing), times the
    multiplier, spread evenly over the time between them, cut at local midnights."""
    totals: dict[int, list[float]] = {}
    readings = list(zip(times, values, strict=True))
    for (t0, v0), (t1, v1) in itertools.pairwise(readings):
        delta = v1 - v0
        if delta < 0:
            wrap = None
            if rollover is not None and 0 <= v1 < rollover:
                wrap = (rollover - v0) + v1
            delta = wrap if wrap is not None and rollover and wrap <= rollover / 10 else 0.0
        delta *= multiplier
        cursor = t0
        while cursor < t1:
            day = datetime.fromtimestamp(cursor / 1000, zone).date()
            next_midnight = local_midnight(day + timedelta(days=1), zone)
            piece_end = min(t1, next_midnight)
            start = local_midnight(day, zone)
            totals.setdefault(start, []).append(delta * (piece_end - cursor) / (t1 - t0))
            cursor = piece_end
    return {day: math.fsum(parts) for day, parts in totals.items()}


@pytest.mark.parametrize("seed", [6, 25])
async def test_irregular_readings_match_a_plain_computation(
    http: httpx.AsyncClient, seed: int
) -> None:
    """Readings at jittered times with gaps, a reset and a wrap, across the October DST change,
    on a meter with a multiplier: each local day's total as a plain computation says."""
    rng = random.Random(seed)
    admin, site = await new_site(http)
    meter = (await create_meter(http, admin, site, rolloverValue=10000, multiplier=2.5))["meterId"]
    lo = local_midnight(date(2026, 10, 24))
    hi = local_midnight(date(2026, 10, 27))
    times: list[int] = []
    values: list[float] = []
    t, value = lo - 7 * 60_000, 9_000.0
    # Until a reading after the range, so that every hour of it is measured.
    while not times or times[-1] < hi:
        times.append(t)
        values.append(round(value, 3))
        t += rng.choice([60_000, 300_000, 840_000, 900_000, 960_000, 3_600_000, 7_200_000])
        value += rng.uniform(0, 12)
        if rng.random() < 0.01:
            value = rng.uniform(0, 50)  # a reset
        if value >= 10_000:
            value -= 10_000  # the register wraps
    expected = plain_day_totals(times, values, BERLIN, rollover=10_000, multiplier=2.5)
    expected = {day: total for day, total in expected.items() if lo <= day < hi}
    await write_readings(http, admin, meter, times, values)
    series = await wait_for_series(http, admin, meter, lo, hi, "GRANULARITY_DAY", expected)
    assert [p["endTime"] for p in series["points"]][1] == iso(local_midnight(date(2026, 10, 26)))
    hours = await consumption(http, admin, meter, lo, hi, "GRANULARITY_HOUR")
    assert len(hours["points"]) == 24 + 25 + 24
    assert close(math.fsum(p["value"] for p in hours["points"]), math.fsum(expected.values()), 1e-9)
    assert all(p["value"] >= 0 for p in hours["points"])
