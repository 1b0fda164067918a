"""Property-based tests of the rollups (hypothesis): for generated readings in zones with DST and
half-hour offsets, each local day's total from quarter_hours + aggregate equals a plain
computation that splits every pair of readings at local midnights with datetime arithmetic."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.analytics.rollups import (
    Granularity,
    MeterSpec,
    Reading,
    RegisterType,
    aggregate,
    quarter_hours,
)

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC", "Australia/Lord_Howe"]
# DST days of those zones in 2026, and ordinary ones.
ANCHORS = [
    date(2026, 3, 29),
    date(2026, 10, 25),
    date(2026, 3, 8),
    date(2026, 11, 1),
    date(2026, 4, 5),
    date(2026, 10, 4),
    date(2026, 6, 1),
]
HOUR_MS = 3_600_000
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime.combine(day, time(0), tzinfo=zone).timestamp() * 1000)


def local_days(start_ms: int, end_ms: int, zone: ZoneInfo) -> Iterator[tuple[int, int]]:
    """The local days [midnight, next midnight) overlapping [start_ms, end_ms)."""
    day = datetime.fromtimestamp(start_ms / 1000, zone).date()
    while (lo := midnight(day, zone)) < end_ms:
        hi = midnight(day + timedelta(days=1), zone)
        if hi > start_ms:
            yield lo, hi
        day += timedelta(days=1)


def split_by_day(t0: int, t1: int, zone: ZoneInfo) -> Iterator[tuple[int, int]]:
    """(day start, ms of [t0, t1) in that day) for each local day the span touches."""
    for lo, hi in local_days(t0, t1, zone):
        yield lo, min(hi, t1) - max(lo, t0)


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[str, list[tuple[int, float]], float | None, float]:
    """A zone, time-ordered readings of a counter (with resets, and wraps when it has a
    rollover value), the rollover value and a multiplier."""
    zone = draw(st.sampled_from(ZONES))
    anchor = draw(st.sampled_from(ANCHORS))
    rollover = draw(st.sampled_from([None, 1000.0, 100_000.0]))
    multiplier = draw(st.sampled_from([1.0, 0.5, 40.0]))
    t = midnight(anchor, ZoneInfo(zone)) - draw(st.integers(0, 6 * HOUR_MS))
    value = draw(st.floats(0, 900))
    readings = [(t, value)]
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.integers(1, 3 * HOUR_MS))
        step = draw(st.sampled_from(["add", "add", "add", "add", "reset"]))
        if step == "reset":
            value = draw(st.floats(0, 10))
        else:
            value += draw(st.floats(0, 80))
            if rollover is not None and value >= rollover:
                value -= rollover
        readings.append((t, value))
    return zone, readings, rollover, multiplier


def plain_cumulative_days(
    readings: Sequence[tuple[int, float]], zone: ZoneInfo, rollover: float | None, multiplier: float
) -> dict[int, float]:
    totals: dict[int, list[float]] = {}
    for (t0, v0), (t1, v1) in itertools.pairwise(readings):
        delta = v1 - v0
        if delta < 0:
            wrapped = None if rollover is None else rollover - v0 + v1
            plausible = (
                rollover is not None
                and wrapped is not None
                and 0 <= v1 < rollover
                and v0 <= rollover
                and wrapped <= 0.1 * rollover
            )
            delta = wrapped if plausible and wrapped is not None else 0.0
        for day, share in split_by_day(t0, t1, zone):
            totals.setdefault(day, []).append(delta * multiplier * share / (t1 - t0))
    return {day: math.fsum(parts) for day, parts in totals.items()}


def rolled_up_days(
    readings: Sequence[tuple[int, float]], spec: MeterSpec, zone: ZoneInfo
) -> dict[int, float]:
    first = datetime.fromtimestamp(readings[0][0] / 1000, zone).date()
    last = datetime.fromtimestamp(readings[-1][0] / 1000, zone).date()
    lo, hi = midnight(first, zone), midnight(last + timedelta(days=1), zone)
    quarters = quarter_hours([Reading(t, v) for t, v in readings], spec, lo, hi)
    assert all(q.value >= 0 for q in quarters)
    days = aggregate(quarters, Granularity.DAY, zone)
    hours = aggregate(quarters, Granularity.HOUR, zone)
    # Hours add up to their days.
    for day in days:
        inside = [h.value for h in hours if day.start_ms <= h.start_ms < day.end_ms]
        assert math.isclose(math.fsum(inside), day.value, rel_tol=1e-9, abs_tol=1e-9)
    assert [(d.start_ms, d.end_ms) for d in days] == list(local_days(lo, hi, zone))
    return {day.start_ms: day.value for day in days}


def same_days(actual: dict[int, float], expected: dict[int, float]) -> bool:
    keys = set(actual) | set(expected)
    return all(
        math.isclose(actual.get(k, 0.0), expected.get(k, 0.0), rel_tol=1e-9, abs_tol=1e-7)
        for k in keys
    )


@PROPERTY_SETTINGS
@given(histories())
def test_cumulative_day_totals_equal_a_plain_split_at_local_midnights(
    history: tuple[str, list[tuple[int, float]], float | None, float],
) -> None:
    zone_name, readings, rollover, multiplier = history
    zone = ZoneInfo(zone_name)
    spec = MeterSpec(
        RegisterType.CUMULATIVE,
        "kWh",
        time_zone=zone_name,
        multiplier=multiplier,
        rollover_value=rollover,
    )
    actual = rolled_up_days(readings, spec, zone)
    expected = plain_cumulative_days(readings, zone, rollover, multiplier)
    assert same_days(actual, expected), (actual, expected)


@PROPERTY_SETTINGS
@given(
    zone_name=st.sampled_from(ZONES),
    anchor=st.sampled_from(ANCHORS),
    interval_minutes=st.sampled_from([5, 15, 30, 60]),
    amounts=st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=1, max_size=200),
)
def test_interval_day_totals_equal_each_reading_spread_over_the_interval_it_ends(
    zone_name: str, anchor: date, interval_minutes: int, amounts: list[float | None]
) -> None:
    zone = ZoneInfo(zone_name)
    interval = interval_minutes * 60_000
    # One reading per interval from an hour before the anchor's midnight; None: missing.
    first_end = midnight(anchor, zone) - HOUR_MS + interval
    readings = [
        (first_end + i * interval, amount) for i, amount in enumerate(amounts) if amount is not None
    ]
    if not readings:
        return
    spec = MeterSpec(
        RegisterType.INTERVAL, "kWh", time_zone=zone_name, expected_interval_ms=interval
    )
    expected: dict[int, list[float]] = {}
    for end, amount in readings:
        for day, share in split_by_day(end - interval, end, zone):
            expected.setdefault(day, []).append(amount * share / interval)
    plain = {day: math.fsum(parts) for day, parts in expected.items()}
    # The interval of the first reading starts before it: include that day.
    first_start = readings[0][0] - interval
    extended = [(first_start, 0.0), *readings]
    actual = rolled_up_days(extended, spec, zone)
    assert same_days(actual, plain), (actual, plain)


@PROPERTY_SETTINGS
@given(
    zone_name=st.sampled_from(ZONES),
    anchor=st.sampled_from(ANCHORS),
    samples=st.lists(
        st.tuples(st.integers(60_000, 2 * HOUR_MS), st.floats(0, 500)), min_size=2, max_size=80
    ),
)
def test_instantaneous_day_totals_equal_the_integral_of_the_interpolated_rate(
    zone_name: str, anchor: date, samples: list[tuple[int, float]]
) -> None:
    zone = ZoneInfo(zone_name)
    t = midnight(anchor, zone) - 2 * HOUR_MS
    readings = []
    for gap, rate in samples:
        t += gap
        readings.append((t, rate))
    spec = MeterSpec(RegisterType.INSTANTANEOUS, "kW", time_zone=zone_name)
    expected: dict[int, list[float]] = {}
    for (t0, p0), (t1, p1) in itertools.pairwise(readings):
        for lo, hi in local_days(t0, t1, zone):
            a, b = max(lo, t0), min(hi, t1)
            pa = p0 + (p1 - p0) * (a - t0) / (t1 - t0)
            pb = p0 + (p1 - p0) * (b - t0) / (t1 - t0)
            expected.setdefault(lo, []).append((pa + pb) / 2 * (b - a) / HOUR_MS)
    plain = {day: math.fsum(parts) for day, parts in expected.items()}
    actual = rolled_up_days(readings, spec, zone)
    assert same_days(actual, plain), (actual, plain)
