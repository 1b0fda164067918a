"""Analytics rollups: local-time buckets across DST, counters, apportioning, recomputation."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.analytics.rollups import (
    MS_PER_HOUR,
    QUARTER_HOUR_MS,
    Bucket,
    Granularity,
    MeterSpec,
    Reading,
    RegisterType,
    UnknownUnitError,
    affected_range,
    aggregate,
    aligned_range,
    bucket_edges,
    bucket_end,
    bucket_spans,
    bucket_start,
    cover,
    local_midnight_ms,
    net,
    normalise_unit,
    quarter_columns,
    quarter_hours,
    window,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
MINUTE = 60_000


def ms(text: str) -> int:
    """An ISO time with offset, or naive meaning UTC, as epoch milliseconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def local_day(day: date, tz: ZoneInfo) -> tuple[int, int]:
    return local_midnight_ms(day, tz), local_midnight_ms(day + timedelta(days=1), tz)


def local_hours(spans: list[tuple[int, int]], tz: ZoneInfo) -> list[str]:
    return [datetime.fromtimestamp(s / 1000, tz).strftime("%H:%M%z") for s, _ in spans]


# --- buckets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (BERLIN, date(2026, 3, 29), 23),
        (BERLIN, date(2026, 10, 25), 25),
        (BERLIN, date(2026, 6, 1), 24),
        (NEW_YORK, date(2026, 3, 8), 23),
        (NEW_YORK, date(2026, 11, 1), 25),
        (KOLKATA, date(2026, 3, 29), 24),
    ],
)
def test_local_day_has_the_right_number_of_hours_and_quarter_hours(
    tz: ZoneInfo, day: date, hours: int
) -> None:
    start, end = local_day(day, tz)
    assert end - start == hours * MS_PER_HOUR
    hourly = bucket_spans(start, end, Granularity.HOUR, tz)
    print(f"{tz.key} {day}: {len(hourly)} hourly buckets")
    assert len(hourly) == hours
    assert len(bucket_spans(start, end, Granularity.QUARTER_HOUR, tz)) == 4 * hours
    assert bucket_spans(start, end, Granularity.DAY, tz) == [(start, end)]
    assert all(e - s == MS_PER_HOUR for s, e in hourly)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(hourly))


def test_berlin_october_repeats_the_two_o_clock_hour_as_two_buckets() -> None:
    start, end = local_day(date(2026, 10, 25), BERLIN)
    labels = local_hours(bucket_spans(start, end, Granularity.HOUR, BERLIN), BERLIN)
    assert labels[:5] == ["00:00+0200", "01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100"]
    start, end = local_day(date(2026, 3, 29), BERLIN)
    labels = local_hours(bucket_spans(start, end, Granularity.HOUR, BERLIN), BERLIN)
    assert labels[:3] == ["00:00+0100", "01:00+0100", "03:00+0200"]


def test_kolkata_buckets_align_to_local_time() -> None:
    t = ms("2026-01-01T00:20:00")  # 05:50 in Kolkata
    assert bucket_start(t, Granularity.QUARTER_HOUR, KOLKATA) == ms("2026-01-01T00:15:00")
    assert bucket_start(t, Granularity.HOUR, KOLKATA) == ms("2025-12-31T23:30:00")
    assert bucket_start(t, Granularity.DAY, KOLKATA) == ms("2025-12-31T18:30:00")
    assert bucket_end(ms("2025-12-31T23:30:00"), Granularity.HOUR, KOLKATA) == ms(
        "2026-01-01T00:30:00"
    )
    start, end = local_day(date(2026, 1, 1), KOLKATA)
    assert local_hours(bucket_spans(start, end, Granularity.QUARTER_HOUR, KOLKATA), KOLKATA)[
        :3
    ] == ["00:00+0530", "00:15+0530", "00:30+0530"]


def test_weeks_start_monday_and_months_at_local_midnight() -> None:
    t = ms("2026-03-29T12:00:00")  # a Sunday
    week = bucket_start(t, Granularity.WEEK, BERLIN)
    assert datetime.fromtimestamp(week / 1000, BERLIN).isoformat() == "2026-03-23T00:00:00+01:00"
    assert bucket_end(week, Granularity.WEEK, BERLIN) - week == (7 * 24 - 1) * MS_PER_HOUR
    month = bucket_start(t, Granularity.MONTH, BERLIN)
    assert datetime.fromtimestamp(month / 1000, BERLIN).isoformat() == "2026-03-01T00:00:00+01:00"
    assert bucket_end(month, Granularity.MONTH, BERLIN) - month == (31 * 24 - 1) * MS_PER_HOUR
    december = bucket_start(ms("2026-12-31T22:59:59"), Granularity.MONTH, BERLIN)
    assert bucket_end(december, Granularity.MONTH, BERLIN) == ms("2026-12-31T23:00:00")


@pytest.mark.parametrize(
    "name", ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
)
def test_every_bucket_start_is_the_floor_of_its_own_instants_over_a_year(name: str) -> None:
    tz = ZoneInfo(name)
    start, end = ms("2026-01-01T00:00:00"), ms("2027-01-01T00:00:00")
    quarters = {s for s, _ in bucket_spans(start - 86_400_000, end, Granularity.QUARTER_HOUR, tz)}
    for granularity in (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY):
        spans = bucket_spans(start, end, granularity, tz)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        for s, e in spans[:: max(1, len(spans) // 500)]:
            assert bucket_start(s, granularity, tz) == s
            assert bucket_start(e - 1, granularity, tz) == s
            assert bucket_start((s + e) // 2, granularity, tz) == s
            assert s in quarters  # quarter hours refine every coarser partition


def test_lord_howe_half_hour_dst_shift_still_partitions_time() -> None:
    tz = ZoneInfo("Australia/Lord_Howe")
    start, end = local_day(date(2026, 10, 4), tz)  # +10:30 -> +11 at 02:00 local
    hourly = bucket_spans(start, end, Granularity.HOUR, tz)
    assert sum(e - s for s, e in hourly) == 23.5 * MS_PER_HOUR
    assert len(hourly) == 24  # the hour cut short by the change is its own bucket


# --- units ---------------------------------------------------------------------------------------


def test_units_are_normalised_per_dimension() -> None:
    assert normalise_unit("Wh").factor == pytest.approx(0.001)
    assert normalise_unit("MWh").factor == 1000
    assert normalise_unit("L").canonical == "m3"
    assert normalise_unit("L").factor == pytest.approx(0.001)
    assert normalise_unit("GJ").factor == pytest.approx(277.7777778)
    assert normalise_unit("W").is_rate
    with pytest.raises(UnknownUnitError):
        normalise_unit("kwh")


# --- consumption -------------------------------------------------------------------------------

T0 = ms("2026-05-04T00:00:00")


def cumulative(**kwargs: object) -> MeterSpec:
    return MeterSpec(register_type=RegisterType.CUMULATIVE, unit="kWh", **kwargs)  # type: ignore[arg-type]


def values(buckets: list[Bucket]) -> list[float]:
    return [round(b.value, 9) for b in buckets]


def test_cumulative_pairs_straddling_boundaries_are_apportioned_linearly() -> None:
    readings = [Reading(T0 + 10 * MINUTE, 100.0), Reading(T0 + 40 * MINUTE, 130.0)]
    buckets = quarter_hours(readings, cumulative(), T0, T0 + MS_PER_HOUR)
    assert values(buckets) == [5.0, 15.0, 10.0, 0.0]
    assert [b.readings for b in buckets] == [1, 0, 1, 0]
    assert all(b.completeness == 0 for b in buckets)  # one 30-minute gap: 2 intervals missing


def test_counter_reset_starts_a_new_baseline_and_is_flagged() -> None:
    readings = [Reading(T0 + i * QUARTER_HOUR_MS, v) for i, v in enumerate([100, 110, 120, 5, 15])]
    buckets = quarter_hours(readings, cumulative(), T0, T0 + 5 * QUARTER_HOUR_MS)
    assert values(buckets) == [10.0, 10.0, 0.0, 10.0, 0.0]
    assert [b.resets for b in buckets] == [0, 0, 0, 1, 0]
    assert all(b.value >= 0 for b in buckets)


def test_rollover_wraps_when_plausible_and_resets_otherwise() -> None:
    spec = cumulative(rollover_value=100_000.0, multiplier=2.0)
    wraps = [99_990.0, 99_995.0, 5.0, 15.0]
    readings = [Reading(T0 + i * QUARTER_HOUR_MS, v) for i, v in enumerate(wraps)]
    buckets = quarter_hours(readings, spec, T0, T0 + MS_PER_HOUR)
    assert values(buckets) == [10.0, 20.0, 20.0, 0.0]  # 5, 10, 10 times the multiplier
    assert [b.rollovers for b in buckets] == [0, 0, 1, 0]
    implausible = [Reading(T0, 50_000.0), Reading(T0 + QUARTER_HOUR_MS, 3.0)]
    buckets = quarter_hours(implausible, spec, T0, T0 + 2 * QUARTER_HOUR_MS)
    assert values(buckets) == [0.0, 0.0]
    assert buckets[1].resets == 1
    assert buckets[1].rollovers == 0


def test_units_and_multiplier_apply() -> None:
    spec = MeterSpec(register_type=RegisterType.CUMULATIVE, unit="Wh", multiplier=40.0)
    readings = [Reading(T0, 1_000.0), Reading(T0 + QUARTER_HOUR_MS, 1_250.0)]
    assert values(quarter_hours(readings, spec, T0, T0 + QUARTER_HOUR_MS)) == [10.0]
    water = MeterSpec(register_type=RegisterType.INTERVAL, unit="L")
    buckets = quarter_hours([Reading(T0 + QUARTER_HOUR_MS, 500.0)], water, T0, T0 + MS_PER_HOUR)
    assert values(buckets) == [0.5, 0.0, 0.0, 0.0]


def test_interval_readings_are_summed_over_the_interval_they_end() -> None:
    spec = MeterSpec(
        register_type=RegisterType.INTERVAL, unit="kWh", expected_interval_ms=MS_PER_HOUR
    )
    readings = [Reading(T0 + MS_PER_HOUR, 4.0), Reading(T0 + 2 * MS_PER_HOUR, 8.0)]
    hours = aggregate(
        quarter_hours(readings, spec, T0, T0 + 2 * MS_PER_HOUR), Granularity.HOUR, "UTC"
    )
    assert values(hours) == [4.0, 8.0]
    assert [h.completeness for h in hours] == [1.0, 1.0]


def test_instantaneous_power_is_integrated_and_peak_demand_is_the_best_quarter_hour() -> None:
    spec = MeterSpec(
        register_type=RegisterType.INSTANTANEOUS, unit="W", expected_interval_ms=MINUTE
    )
    # 4 kW flat for an hour, then a ramp from 4 kW to 12 kW over the next 30 minutes.
    readings = [Reading(T0 + m * MINUTE, 4_000.0) for m in range(61)]
    readings += [Reading(T0 + (60 + m) * MINUTE, 4_000.0 + 8_000.0 * m / 30) for m in range(1, 31)]
    quarters = quarter_hours(readings, spec, T0, T0 + 2 * MS_PER_HOUR)
    hours = aggregate(quarters, Granularity.HOUR, "UTC")
    assert hours[0].value == pytest.approx(4.0)
    assert hours[1].value == pytest.approx(0.5 * (4 + 12) / 2)
    assert hours[1].peak_demand == pytest.approx(10.0)  # 15-minute average from 8 to 12 kW
    assert hours[1].peak_time_ms == T0 + MS_PER_HOUR + QUARTER_HOUR_MS
    assert hours[1].completeness == pytest.approx(0.5)


def test_completeness_is_the_share_of_expected_intervals_present() -> None:
    # A 15-minute meter missing the readings at 00:30 and 00:45: 01:00 follows 00:15.
    times = [0, 15, 60, 75, 90, 105, 120]
    readings = [Reading(T0 + m * MINUTE, float(m)) for m in times]
    hours = aggregate(
        quarter_hours(readings, cumulative(), T0, T0 + 2 * MS_PER_HOUR), Granularity.HOUR, "UTC"
    )
    assert [h.completeness for h in hours] == [0.25, 1.0]
    assert values(hours) == [60.0, 60.0]  # the gap is still apportioned linearly


# --- DST days built from readings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first", "days"),
    [
        ("Europe/Berlin", date(2026, 3, 28), 3),
        ("Europe/Berlin", date(2026, 10, 24), 3),
        ("America/New_York", date(2026, 3, 7), 3),
        ("America/New_York", date(2026, 10, 31), 3),
        ("Asia/Kolkata", date(2026, 3, 28), 3),
    ],
)
def test_each_local_day_total_is_the_sum_of_its_hours(name: str, first: date, days: int) -> None:
    tz = ZoneInfo(name)
    spec = cumulative(time_zone=name, multiplier=1.5)
    start, end = local_midnight_ms(first, tz), local_midnight_ms(first + timedelta(days=days), tz)
    rng = random.Random(7)
    readings, t, v = [], start - 5 * MINUTE, 1000.0
    while t < end + 10 * MINUTE:  # irregular 5-to-20-minute cadence, straddling boundaries
        readings.append(Reading(t, v))
        t += rng.randint(5, 20) * MINUTE
        v += rng.uniform(0, 3)
    quarters = quarter_hours(readings, spec, start, end)
    hours = aggregate(quarters, Granularity.HOUR, tz)
    daily = aggregate(quarters, Granularity.DAY, tz)
    assert len(daily) == days
    for day in daily:
        inside = [h for h in hours if day.start_ms <= h.start_ms < day.end_ms]
        assert len(inside) == (day.end_ms - day.start_ms) // MS_PER_HOUR
        assert day.value == pytest.approx(math.fsum(h.value for h in inside), rel=1e-12)
    expected_total = 0.0
    for a, b in itertools.pairwise(readings):
        lo, hi = max(a.time_ms, start), min(b.time_ms, end)
        if lo < hi:
            expected_total += (b.value - a.value) * 1.5 * (hi - lo) / (b.time_ms - a.time_ms)
    assert math.fsum(d.value for d in daily) == pytest.approx(expected_total, rel=1e-12)


# --- recomputation -------------------------------------------------------------------------------


def random_readings(rng: random.Random, spec: MeterSpec, start: int, count: int) -> list[Reading]:
    readings, t, v = [], start, rng.uniform(0, 90_000)
    for _ in range(count):
        readings.append(Reading(t, round(v, 3)))
        t += rng.choice(
            [QUARTER_HOUR_MS, QUARTER_HOUR_MS, 7 * MINUTE, 45 * MINUTE, 3 * MS_PER_HOUR]
        )
        roll = rng.random()
        if spec.register_type is RegisterType.CUMULATIVE and roll < 0.02:
            v = rng.uniform(0, 10)  # reset (or wrap when close to the rollover value)
        elif spec.register_type is RegisterType.CUMULATIVE:
            v = (v + rng.uniform(0, 800)) % 100_000
        else:
            v = rng.uniform(0, 50)
    return readings


SPECS = [
    cumulative(time_zone="Europe/Berlin", rollover_value=100_000.0, multiplier=3.0),
    MeterSpec(register_type=RegisterType.INTERVAL, unit="Wh", time_zone="Asia/Kolkata"),
    MeterSpec(register_type=RegisterType.INSTANTANEOUS, unit="kW", time_zone="America/New_York"),
]


def same(a: list[Bucket], b: list[Bucket]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.start_ms, x.end_ms, x.covered_ms, x.readings, x.resets, x.rollovers) == (
            y.start_ms,
            y.end_ms,
            y.covered_ms,
            y.readings,
            y.resets,
            y.rollovers,
        )
        assert x.value == pytest.approx(y.value, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.register_type.value)
def test_recomputing_a_range_from_its_window_equals_computing_everything(spec: MeterSpec) -> None:
    rng = random.Random(11)
    start = ms("2026-03-20T00:00:00")
    readings = random_readings(rng, spec, start + 3 * MINUTE, 1500)
    end = readings[-1].time_ms + MS_PER_HOUR
    everything = quarter_hours(readings, spec, start, end)
    by_start = {b.start_ms: i for i, b in enumerate(everything)}
    for _ in range(40):
        a, b = sorted(rng.sample(range(len(everything)), 2))
        lo, hi = everything[a].start_ms, everything[b].end_ms
        part = quarter_hours(window(readings, spec, lo, hi), spec, lo, hi)
        same(part, everything[by_start[lo] : by_start[lo] + len(part)])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.register_type.value)
def test_late_readings_change_only_the_affected_range(spec: MeterSpec) -> None:
    rng = random.Random(5)
    start = ms("2026-01-01T00:00:00")
    readings = random_readings(rng, spec, start, 3000)
    end = readings[-1].time_ms + MS_PER_HOUR
    for _ in range(15):
        late = sorted(rng.sample(readings[1:-1], rng.randint(1, 5)))
        late = [late[0]] if rng.random() < 0.5 else late[:2]
        stored = [r for r in readings if r not in late]
        first, last = late[0].time_ms, late[-1].time_ms
        previous = max((r.time_ms for r in stored if r.time_ms < first), default=None)
        following = min((r.time_ms for r in stored if r.time_ms > last), default=None)
        lo, hi = affected_range(spec, first, last, previous, following)
        before = quarter_hours(stored, spec, start, end)
        after = quarter_hours(readings, spec, start, end)
        for old, new in zip(before, after, strict=True):
            if not lo <= old.start_ms < hi:
                assert (old.value, old.readings, old.covered_ms) == (
                    new.value,
                    new.readings,
                    new.covered_ms,
                )
        recomputed = quarter_hours(window(readings, spec, lo, hi), spec, lo, hi)
        first_index = next(i for i, b in enumerate(after) if b.start_ms == lo)
        same(recomputed, after[first_index : first_index + len(recomputed)])


def test_a_reading_three_months_late_updates_its_day_week_and_month() -> None:
    spec = cumulative(time_zone="Europe/Berlin")
    start, end = ms("2026-01-01T00:00:00"), ms("2026-04-30T00:00:00")
    readings = [Reading(t, (t - start) / MS_PER_HOUR) for t in range(start, end, 6 * MS_PER_HOUR)]
    # The meter stalled from Saturday 2026-01-31 until Monday 2026-02-02: the reading that shows
    # it arrives at the end of April. Before, the gap spread over Jan 31, Feb 1 and Feb 2 (two
    # weeks, two months); after, it all lands on Monday Feb 2.
    gap_from, gap_to = ms("2026-01-31T06:00:00"), ms("2026-02-02T12:00:00")
    stored = [r for r in readings if not gap_from < r.time_ms < gap_to]
    late = Reading(ms("2026-02-02T06:00:00"), (gap_from - start) / MS_PER_HOUR)
    before = quarter_hours(stored, spec, start, end)
    after = quarter_hours(sorted([*stored, late]), spec, start, end)
    lo, hi = affected_range(spec, late.time_ms, late.time_ms, gap_from, gap_to)
    assert (lo, hi) == (gap_from, gap_to + QUARTER_HOUR_MS)
    for granularity, expected_changes in (
        (Granularity.DAY, 3),
        (Granularity.WEEK, 2),
        (Granularity.MONTH, 2),
    ):
        old = {b.start_ms: b.value for b in aggregate(before, granularity, BERLIN)}
        new = {b.start_ms: b.value for b in aggregate(after, granularity, BERLIN)}
        changed = [s for s in old if abs(old[s] - new[s]) > 1e-9]
        assert len(changed) == expected_changes, granularity
        assert all(bucket_end(s, granularity, BERLIN) > lo and s < hi for s in changed)
        assert math.fsum(old.values()) == pytest.approx(math.fsum(new.values()))
    recomputed = quarter_hours(window(sorted([*stored, late]), spec, lo, hi), spec, lo, hi)
    patched = {b.start_ms: b for b in before} | {b.start_ms: b for b in recomputed}
    same(sorted(patched.values(), key=lambda b: b.start_ms), after)


def test_the_same_readings_twice_change_nothing() -> None:
    spec = SPECS[0]
    readings = random_readings(random.Random(3), spec, T0, 200)
    end = readings[-1].time_ms
    same(quarter_hours(readings + readings, spec, T0, end), quarter_hours(readings, spec, T0, end))


def test_net_subtracts_export_from_import() -> None:
    spec = cumulative()
    imported = quarter_hours(
        [Reading(T0, 0.0), Reading(T0 + QUARTER_HOUR_MS, 5.0)], spec, T0, T0 + QUARTER_HOUR_MS
    )
    exported = quarter_hours(
        [Reading(T0, 0.0), Reading(T0 + QUARTER_HOUR_MS, 7.0)], spec, T0, T0 + QUARTER_HOUR_MS
    )
    (netted,) = net(imported, exported)
    assert (netted.start_ms, netted.end_ms, netted.value) == (T0, T0 + QUARTER_HOUR_MS, -2.0)
    assert netted.completeness == 1.0
    assert netted.peak_demand == imported[0].peak_demand


def test_cover_tiles_a_range_with_the_coarsest_buckets() -> None:
    zone = ZoneInfo("Europe/Berlin")
    start = local_midnight_ms(date(2026, 3, 28), zone) + 3 * 3_600_000 + QUARTER_HOUR_MS
    end = local_midnight_ms(date(2026, 6, 2), zone) + 3_600_000
    pieces = cover(start, end, zone)
    assert [granularity for granularity, _, _ in pieces] == [
        Granularity.QUARTER_HOUR,
        Granularity.HOUR,
        Granularity.DAY,
        Granularity.MONTH,
        Granularity.DAY,
        Granularity.HOUR,
    ]
    # The runs are contiguous and tile the range exactly.
    assert pieces[0][1] == start
    assert pieces[-1][2] == end
    for (_, _, previous_end), (_, next_start, _) in itertools.pairwise(pieces):
        assert previous_end == next_start
    # The month run is April and May (local months).
    month = next(piece for piece in pieces if piece[0] is Granularity.MONTH)
    assert month[1:] == (
        local_midnight_ms(date(2026, 4, 1), zone),
        local_midnight_ms(date(2026, 6, 1), zone),
    )


@pytest.mark.parametrize("seed", range(24))
def test_quarter_columns_give_the_numbers_of_quarter_hours(seed: int) -> None:
    """The column-wise computation the consumer uses agrees with the reference one, for every
    register type, irregular cadences, gaps, counter resets and rollovers, in three zones."""
    rng = random.Random(seed)
    register = [RegisterType.CUMULATIVE, RegisterType.INTERVAL, RegisterType.INSTANTANEOUS][
        seed % 3
    ]
    zone = ["Europe/Berlin", "Asia/Kolkata", "America/New_York"][seed % 4 % 3]
    interval = rng.choice([60_000, 300_000, QUARTER_HOUR_MS])
    spec = MeterSpec(
        register_type=register,
        unit=rng.choice(["kWh", "Wh"]) if register is not RegisterType.INSTANTANEOUS else "kW",
        time_zone=zone,
        multiplier=rng.choice([1.0, 2.5]),
        rollover_value=1000.0 if seed % 2 else None,
        expected_interval_ms=interval,
    )
    start = ms("2026-10-24T00:00:00") + rng.randrange(0, 8) * 450_000
    t, value, readings = start, 900.0, []
    for _ in range(rng.randrange(2, 300)):
        t += (
            interval
            if register is RegisterType.INTERVAL
            else rng.choice([interval, interval, interval // 3 + 7, 3 * interval])
        )
        step = rng.uniform(0, 5)
        if register is RegisterType.CUMULATIVE:
            value = value + step if rng.random() > 0.05 else rng.uniform(0, 30)
            value = value - 1000.0 if value >= 1000.0 and spec.rollover_value else value
        else:
            value = step
        readings.append(Reading(t, value))
    lo, hi = aligned_range(start, t + interval, Granularity.DAY, ZoneInfo(zone))
    expected = quarter_hours(readings, spec, lo, hi)
    got = quarter_columns(
        np.array([r.time_ms for r in readings], dtype=np.int64),
        np.array([r.value for r in readings]),
        spec,
        lo,
        hi,
    ).buckets()
    assert [(b.start_ms, b.end_ms) for b in got] == [(b.start_ms, b.end_ms) for b in expected]
    for a, b in zip(got, expected, strict=True):
        assert math.isclose(a.value, b.value, rel_tol=1e-9, abs_tol=1e-9), (a, b)
        assert (a.covered_ms, a.readings, a.resets, a.rollovers) == (
            b.covered_ms,
            b.readings,
            b.resets,
            b.rollovers,
        ), (a, b)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize("granularity", [Granularity.HOUR, Granularity.DAY])
def test_bucket_edges_are_the_bucket_spans(zone: str, granularity: Granularity) -> None:
    tz = ZoneInfo(zone)
    lo, hi = ms("2026-03-27T05:15:00"), ms("2026-04-07T10:45:00")
    spans = bucket_spans(lo, hi, granularity, tz)
    edges = bucket_edges(lo, hi, granularity, zone)
    assert edges.tolist() == [start for start, _ in spans] + [spans[-1][1]]
