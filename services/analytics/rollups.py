"""Consumption rollups: bucket boundaries in a site's time zone and consumption per bucket.

Pure functions, no I/O: the consumer, the queries, the benchmark and the tests all compute
through them, so there is one definition of every number.

Times are integers, milliseconds since the Unix epoch (UTC), like telemetry's readings. A
bucket is the half-open span [start_ms, end_ms).

Buckets (granularity) are counted on the local clock of the meter's site (an IANA zone):
- QUARTER_HOUR and HOUR start where the local clock shows a multiple of 15 or 60 minutes, so a
  site in Asia/Kolkata (+05:30) has hours starting at xx:30 UTC. A UTC-offset change (DST) is
  always a boundary too: a Europe/Berlin day in March has 23 hourly buckets, in October 25
  (the repeated 02:00 hour is two buckets, one per offset).
- DAY, WEEK (ISO, from Monday) and MONTH start at local midnight; when midnight does not exist
  (a DST gap at midnight) the day starts at the transition, its first existing instant.
Every coarser partition is a union of quarter hours, so a day's total is exactly the sum of
its hours and its quarter hours: rollups are built from quarter hours (`quarter_hours`) and
aggregated upwards (`aggregate`).

Consumption by register type (values normalised to kWh for energy, m3 for volume):
- CUMULATIVE: the difference between consecutive readings, spread linearly over the time
  between them, so a pair straddling a boundary is apportioned by the share of its time on each
  side. A drop in value is a rollover when `rollover_value` is set and the wrapped difference is
  plausible (at most `MAX_WRAP_FRACTION` of the register's range), otherwise a meter reset:
  the new value is the new baseline, the pair contributes nothing (never a negative amount) and
  the bucket holding the later reading counts the reset.
- INTERVAL: each reading is the amount for the `expected_interval` ending at its time (the
  load-profile convention: the 00:15 value covers 00:00-00:15), spread linearly over it.
- INSTANTANEOUS: a rate (kW, m3/h) integrated over time with the trapezoid rule (linear between
  samples), split exactly at boundaries.
The multiplier applies to every register type.

Completeness is the share of a bucket's time covered by readings at their expected cadence: a
pair of readings at most `GAP_TOLERANCE` expected intervals apart covers the time between them;
an INTERVAL reading covers its interval. For a 15-minute meter that is the share of expected
intervals present, and it stays additive (a day's covered time is the sum of its hours').

Peak demand is the maximum 15-minute average rate: a quarter hour's amount over its duration
(kW for energy, m3/h for volume).

Exact incremental recomputation: a quarter hour depends only on the readings of `window`, the
readings inside it plus the nearest one on each side (INTERVAL: those whose interval overlaps
it). So a late reading changes only the quarter hours of `affected_range`, and recomputing
those from their window gives the same numbers as computing everything at once.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

MS_PER_SECOND = 1_000
MS_PER_HOUR = 3_600_000
QUARTER_HOUR_MS = 900_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# A wrap from v0 to v1 is plausible when (rollover - v0) + v1 is at most this share of the
# register's range; a larger "wrap" is a reset (e.g. a meter exchanged or reprogrammed).
MAX_WRAP_FRACTION = 0.1
# Consecutive readings at most this many expected intervals apart count as present (a meter
# reporting every 15 minutes with some jitter); a longer gap counts as missing data.
GAP_TOLERANCE = 1.5
# An hour at least this complete counts as measured (anomalies, baseload, forecasts judge
# only such hours: a partly measured hour would read as a drop in consumption).
COMPLETE_HOUR = 0.9


class Granularity(Enum):
    QUARTER_HOUR = "QUARTER_HOUR"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


class RegisterType(Enum):
    CUMULATIVE = "CUMULATIVE"
    INTERVAL = "INTERVAL"
    INSTANTANEOUS = "INSTANTANEOUS"


class UnknownUnitError(ValueError):
    """A unit the rollups cannot normalise."""


@dataclass(frozen=True)
class UnitInfo:
    """How to normalise a meter's unit.

    canonical: "kWh" or "m3", the quantity the rollups report. factor: multiply a value by it to
    get the canonical quantity (for a rate: kW or m3/h, which integrated over hours gives the
    canonical quantity). is_rate: the unit is a rate (INSTANTANEOUS registers).
    """

    canonical: str
    factor: float
    is_rate: bool


_UNITS: dict[str, UnitInfo] = {
    # Energy, normalised to kWh.
    "Wh": UnitInfo("kWh", 1e-3, False),
    "kWh": UnitInfo("kWh", 1.0, False),
    "MWh": UnitInfo("kWh", 1e3, False),
    "GWh": UnitInfo("kWh", 1e6, False),
    "MJ": UnitInfo("kWh", 1 / 3.6, False),
    "GJ": UnitInfo("kWh", 1e3 / 3.6, False),
    # Volume, normalised to m3 (US gallons).
    "m3": UnitInfo("m3", 1.0, False),
    "L": UnitInfo("m3", 1e-3, False),
    "ft3": UnitInfo("m3", 0.028316846592, False),
    "gal": UnitInfo("m3", 0.003785411784, False),
    # Rates: power normalised to kW, flow to m3/h.
    "W": UnitInfo("kWh", 1e-3, True),
    "kW": UnitInfo("kWh", 1.0, True),
    "MW": UnitInfo("kWh", 1e3, True),
    "m3/h": UnitInfo("m3", 1.0, True),
    "L/h": UnitInfo("m3", 1e-3, True),
    "L/min": UnitInfo("m3", 0.06, True),
}


def normalise_unit(unit: str) -> UnitInfo:
    """The canonical quantity and conversion factor of a devices-registry unit (case-sensitive).

    Energy (Wh, kWh, MWh, GWh, MJ, GJ) becomes kWh, volume (m3, L, ft3, gal) m3. A gas meter
    keeps the dimension it measures: converting m3 of gas to kWh needs a calorific value.
    """
    try:
        return _UNITS[unit]
    except KeyError:
        raise UnknownUnitError(f"unknown unit {unit!r}") from None


def rate_unit(canonical: str) -> str:
    """The unit of demand (a 15-minute average rate) for a canonical quantity."""
    return "kW" if canonical == "kWh" else "m3/h"


class Reading(NamedTuple):
    time_ms: int
    value: float


@dataclass(frozen=True)
class MeterSpec:
    """What the rollups need to know about a meter (from the devices registry)."""

    register_type: RegisterType
    unit: str
    time_zone: str = "UTC"
    multiplier: float = 1.0
    rollover_value: float | None = None
    expected_interval_ms: int = QUARTER_HOUR_MS

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class Bucket:
    """Consumption in one bucket [start_ms, end_ms).

    value: the amount in the canonical unit (kWh or m3). covered_ms: time covered by readings at
    their expected cadence. readings: readings timed inside the bucket. resets / rollovers:
    counter resets and wraps revealed by a reading inside the bucket. peak_demand: the highest
    quarter-hour average rate (kW or m3/h) and peak_time_ms the start of that quarter hour.
    cost / co2_kg: the priced amounts (services/analytics/pricing.py), None where unpriced;
    coarser buckets sum the known ones. span_ms: the time expected to be covered, for sums of
    several meters (each meter's bucket length); None: the bucket's length.
    """

    start_ms: int
    end_ms: int
    value: float
    covered_ms: int
    readings: int
    resets: int
    rollovers: int
    peak_demand: float
    peak_time_ms: int
    cost: float | None = None
    co2_kg: float | None = None
    span_ms: int | None = None

    @property
    def expected_ms(self) -> int:
        return self.span_ms if self.span_ms is not None else self.end_ms - self.start_ms

    @property
    def completeness(self) -> float:
        """Share of the bucket's expected time covered by readings, 0 to 1."""
        expected = self.expected_ms
        return min(1.0, self.covered_ms / expected) if expected > 0 else 0.0


# --- time zones and bucket boundaries ----------------------------------------------------------


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _offset_ms(tz: ZoneInfo, t_ms: int) -> int:
    """UTC offset in force at instant t_ms (transitions fall on whole seconds)."""
    offset = datetime.fromtimestamp(t_ms // MS_PER_SECOND, tz).utcoffset()
    assert offset is not None
    return offset // _ONE_MS


def _transition(tz: ZoneInfo, lo_ms: int, hi_ms: int) -> int:
    """First instant in (lo_ms, hi_ms] with hi_ms's offset (the offsets at the two differ)."""
    lo, hi = lo_ms // MS_PER_SECOND, hi_ms // MS_PER_SECOND
    before = _offset_ms(tz, lo * MS_PER_SECOND)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_ms(tz, mid * MS_PER_SECOND) == before:
            lo = mid
        else:
            hi = mid
    return hi * MS_PER_SECOND


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def local_midnight_ms(day: date, tz: ZoneInfo) -> int:
    """The first instant of a local calendar day (its midnight, or the DST transition when
    midnight falls in a gap; the first occurrence when midnight is repeated)."""
    wall = datetime(day.year, day.month, day.day)
    first = _to_ms(wall.replace(tzinfo=tz, fold=0))
    if datetime.fromtimestamp(first // MS_PER_SECOND, tz).replace(tzinfo=None) == wall:
        return first
    # Midnight does not exist: fold=0 and fold=1 read it with the offsets before and after the
    # gap, which bracket the transition; the day begins there.
    other = _to_ms(wall.replace(tzinfo=tz, fold=1))
    return _transition(tz, min(first, other), max(first, other))


def _local_date(t_ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(t_ms // MS_PER_SECOND, tz).date()


def _period_start_date(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return day


def _next_period_date(day: date, granularity: Granularity) -> date:
    start = _period_start_date(day, granularity)
    if granularity is Granularity.DAY:
        return start + timedelta(days=1)
    if granularity is Granularity.WEEK:
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


_STEP_MS = {Granularity.QUARTER_HOUR: QUARTER_HOUR_MS, Granularity.HOUR: MS_PER_HOUR}


def bucket_end(start_ms: int, granularity: Granularity, tz: ZoneInfo) -> int:
    """End of the bucket that starts at start_ms (a bucket boundary)."""
    step = _STEP_MS.get(granularity)
    if step is not None:
        offset = _offset_ms(tz, start_ms)
        aligned = start_ms + step - (start_ms + offset) % step
        if _offset_ms(tz, aligned) != offset:
            return _transition(tz, start_ms, aligned)
        return aligned
    return local_midnight_ms(_next_period_date(_local_date(start_ms, tz), granularity), tz)


def bucket_start(t_ms: int, granularity: Granularity, tz: ZoneInfo) -> int:
    """Start of the bucket holding instant t_ms."""
    step = _STEP_MS.get(granularity)
    if step is not None:
        offset = _offset_ms(tz, t_ms)
        start = t_ms - (t_ms + offset) % step
        if _offset_ms(tz, start) != offset:
            # The offset changed inside this step: the bucket starts at the change.
            start = _transition(tz, start, t_ms)
        return start
    start = local_midnight_ms(_period_start_date(_local_date(t_ms, tz), granularity), tz)
    # Guard for a midnight repeated by a DST change at midnight.
    while (end := bucket_end(start, granularity, tz)) <= t_ms:
        start = end
    return start


def bucket_spans(
    start_ms: int, end_ms: int, granularity: Granularity, tz: ZoneInfo
) -> list[tuple[int, int]]:
    """The buckets overlapping [start_ms, end_ms), in order, as (start, end) pairs."""
    spans: list[tuple[int, int]] = []
    if end_ms <= start_ms:
        return spans
    current = bucket_start(start_ms, granularity, tz)
    while current < end_ms:
        nxt = bucket_end(current, granularity, tz)
        spans.append((current, nxt))
        current = nxt
    return spans


def aligned_range(
    start_ms: int, end_ms: int, granularity: Granularity, tz: ZoneInfo
) -> tuple[int, int]:
    """[start_ms, end_ms) widened to whole buckets."""
    start = bucket_start(start_ms, granularity, tz)
    end = bucket_start(end_ms, granularity, tz)
    if end < end_ms:
        end = bucket_end(end, granularity, tz)
    return start, end


# --- consumption per quarter hour ----------------------------------------------------------------


def _sorted_unique(readings: Iterable[Reading]) -> list[Reading]:
    by_time: dict[int, Reading] = {}
    for reading in readings:
        by_time.setdefault(reading.time_ms, reading)
    return [by_time[t] for t in sorted(by_time)]


def _is_plausible_wrap(previous: float, current: float, rollover: float) -> bool:
    if current < 0 or previous > rollover or current >= rollover:
        return False
    return (rollover - previous) + current <= MAX_WRAP_FRACTION * rollover


class _Accumulator:
    """Quarter-hour spans and what is being added to them."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans
        self.starts = [start for start, _ in spans]
        self.lo = spans[0][0] if spans else 0
        self.hi = spans[-1][1] if spans else 0
        n = len(spans)
        self.value: list[list[float]] = [[] for _ in range(n)]
        self.covered = [0] * n
        self.readings = [0] * n
        self.resets = [0] * n
        self.rollovers = [0] * n

    def index(self, t_ms: int) -> int | None:
        if not self.lo <= t_ms < self.hi:
            return None
        return bisect.bisect_right(self.starts, t_ms) - 1

    def overlaps(self, t0: int, t1: int) -> Iterable[tuple[int, int, int]]:
        """(index, overlap start, overlap end) of the spans overlapping [t0, t1)."""
        a, b = max(t0, self.lo), min(t1, self.hi)
        if a >= b:
            return
        i = bisect.bisect_right(self.starts, a) - 1
        while i < len(self.spans) and self.spans[i][0] < b:
            s, e = self.spans[i]
            yield i, max(s, a), min(e, b)
            i += 1

    def spread(self, t0: int, t1: int, amount: float, covered: bool) -> None:
        """Adds amount, spread uniformly over [t0, t1)."""
        duration = t1 - t0
        for i, a, b in self.overlaps(t0, t1):
            if amount:
                self.value[i].append(amount * (b - a) / duration)
            if covered:
                self.covered[i] += b - a

    def integrate(self, t0: int, p0: float, t1: int, p1: float, covered: bool) -> None:
        """Adds the integral (rate x hours) of the rate linear from p0 at t0 to p1 at t1."""
        slope = (p1 - p0) / (t1 - t0)
        for i, a, b in self.overlaps(t0, t1):
            pa = p0 + slope * (a - t0)
            pb = p0 + slope * (b - t0)
            self.value[i].append((b - a) / MS_PER_HOUR * (pa + pb) / 2)
            if covered:
                self.covered[i] += b - a

    def buckets(self) -> list[Bucket]:
        result = []
        for i, (start, end) in enumerate(self.spans):
            value = math.fsum(self.value[i])
            result.append(
                Bucket(
                    start_ms=start,
                    end_ms=end,
                    value=value,
                    covered_ms=min(self.covered[i], end - start),
                    readings=self.readings[i],
                    resets=self.resets[i],
                    rollovers=self.rollovers[i],
                    peak_demand=value * MS_PER_HOUR / (end - start),
                    peak_time_ms=start,
                )
            )
        return result


def quarter_hours(
    readings: Iterable[Reading], spec: MeterSpec, start_ms: int, end_ms: int
) -> list[Bucket]:
    """Consumption per local quarter hour over [start_ms, end_ms) (widened to whole quarter
    hours), from readings that include at least `window(...)` of that range.

    Every quarter hour of the range is returned, zero-valued where nothing was measured.
    """
    tz = spec.zone
    lo, hi = aligned_range(start_ms, end_ms, Granularity.QUARTER_HOUR, tz)
    acc = _Accumulator(bucket_spans(lo, hi, Granularity.QUARTER_HOUR, tz))
    unit = normalise_unit(spec.unit)
    scale = spec.multiplier * unit.factor
    interval = spec.expected_interval_ms
    max_gap = GAP_TOLERANCE * interval
    ordered = _sorted_unique(readings)

    # A reading counts in the bucket it reports on: an INTERVAL reading in the one holding the
    # end of its interval (a 01:00 value for 00:45-01:00 belongs to the 00:45 quarter hour).
    shift = 1 if spec.register_type is RegisterType.INTERVAL else 0
    for reading in ordered:
        i = acc.index(reading.time_ms - shift)
        if i is not None:
            acc.readings[i] += 1

    if spec.register_type is RegisterType.INTERVAL:
        for reading in ordered:
            t = reading.time_ms
            acc.spread(t - interval, t, max(reading.value, 0.0) * scale, covered=True)
        return acc.buckets()

    for previous, current in itertools.pairwise(ordered):
        t0, t1 = previous.time_ms, current.time_ms
        if t1 < lo or t0 >= hi:
            continue
        covered = t1 - t0 <= max_gap
        if spec.register_type is RegisterType.INSTANTANEOUS:
            acc.integrate(t0, previous.value * scale, t1, current.value * scale, covered)
            continue
        delta = current.value - previous.value
        i = acc.index(t1)
        if delta < 0:
            rollover = spec.rollover_value
            if rollover is not None and _is_plausible_wrap(previous.value, current.value, rollover):
                delta = (rollover - previous.value) + current.value
                if i is not None:
                    acc.rollovers[i] += 1
            else:
                delta = 0.0  # a reset: the new value is the new baseline
                if i is not None:
                    acc.resets[i] += 1
        acc.spread(t0, t1, delta * scale, covered)
    return acc.buckets()


def window(
    readings: Sequence[Reading], spec: MeterSpec, start_ms: int, end_ms: int
) -> list[Reading]:
    """The readings that determine the quarter hours of [start_ms, end_ms) (already aligned to
    quarter hours), from time-ordered readings: what the repository fetches to recompute them.

    CUMULATIVE and INSTANTANEOUS: the last reading at or before start_ms, those inside, and the
    first at or after end_ms. INTERVAL: the readings whose interval overlaps the range, i.e.
    start_ms < time < end_ms + expected_interval.
    """
    times = [r.time_ms for r in readings]
    if spec.register_type is RegisterType.INTERVAL:
        a = bisect.bisect_right(times, start_ms)
        b = bisect.bisect_left(times, end_ms + spec.expected_interval_ms)
        return list(readings[a:b])
    a = max(bisect.bisect_right(times, start_ms) - 1, 0)
    b = min(bisect.bisect_left(times, end_ms) + 1, len(readings))
    return list(readings[a:b])


def affected_range(
    spec: MeterSpec,
    first_ms: int,
    last_ms: int,
    previous_ms: int | None,
    next_ms: int | None,
) -> tuple[int, int]:
    """The quarter hours that change when readings timed first_ms..last_ms are added.

    previous_ms / next_ms: the stored readings just before first_ms and just after last_ms
    (None when there is none). Between them, every pair of consecutive readings changes; an
    INTERVAL reading changes only its own interval. Returned aligned to quarter hours.
    """
    tz = spec.zone
    if spec.register_type is RegisterType.INTERVAL:
        start, end = first_ms - spec.expected_interval_ms, last_ms + 1
    else:
        start = previous_ms if previous_ms is not None else first_ms
        end = (next_ms if next_ms is not None else last_ms) + 1
    return aligned_range(start, end, Granularity.QUARTER_HOUR, tz)


# --- aggregation -------------------------------------------------------------------------------


def aggregate(
    quarters: Sequence[Bucket], granularity: Granularity, time_zone: str | ZoneInfo
) -> list[Bucket]:
    """Rolls quarter hours up into coarser buckets of the given time zone.

    The coarser buckets are unions of the quarter hours of the site's own zone, or of any zone
    whose offsets are whole quarter hours from it (a query's zone override). A bucket only
    partly covered by the quarter hours given keeps its full span, so its completeness shows
    the missing part (buckets that are sums of several meters carry their span_ms, and the
    coarser bucket the sum of the spans given).
    """
    tz = _zone(time_zone) if isinstance(time_zone, str) else time_zone
    if granularity is Granularity.QUARTER_HOUR:
        return list(quarters)
    groups: dict[int, list[Bucket]] = {}
    for quarter in quarters:
        groups.setdefault(bucket_start(quarter.start_ms, granularity, tz), []).append(quarter)
    return [
        _sum_of(
            start,
            bucket_end(start, granularity, tz),
            groups[start],
            spanned=any(q.span_ms is not None for q in groups[start]),
        )
        for start in sorted(groups)
    ]


def known_sum(amounts: Iterable[float | None]) -> float | None:
    """The sum of the known amounts; None when none is known (nothing was priced)."""
    known = [amount for amount in amounts if amount is not None]
    return math.fsum(known) if known else None


def merge(sources: Iterable[Sequence[Bucket]]) -> list[Bucket]:
    """Buckets of several sources (meters, sites) over one partition, summed per bucket:
    amounts, covered and expected time, counts, cost and CO2. Sources are not metered
    together, so the peak is the highest of their own peaks."""
    groups: dict[tuple[int, int], list[Bucket]] = {}
    for buckets in sources:
        for bucket in buckets:
            groups.setdefault((bucket.start_ms, bucket.end_ms), []).append(bucket)
    return [_sum_of(start, end, groups[(start, end)]) for start, end in sorted(groups)]


def _sum_of(
    start_ms: int, end_ms: int, members: Sequence[Bucket], *, spanned: bool = True
) -> Bucket:
    """The members summed into [start_ms, end_ms); the highest peak (the earliest of equals).
    spanned: the sum carries the members' expected time (else its own length is expected)."""
    peak = max(members, key=lambda b: (b.peak_demand, -b.peak_time_ms))
    return Bucket(
        start_ms=start_ms,
        end_ms=end_ms,
        value=math.fsum(b.value for b in members),
        covered_ms=sum(b.covered_ms for b in members),
        readings=sum(b.readings for b in members),
        resets=sum(b.resets for b in members),
        rollovers=sum(b.rollovers for b in members),
        peak_demand=peak.peak_demand,
        peak_time_ms=peak.peak_time_ms,
        cost=known_sum(b.cost for b in members),
        co2_kg=known_sum(b.co2_kg for b in members),
        span_ms=sum(b.expected_ms for b in members) if spanned else None,
    )


def net(imported: Sequence[Bucket], exported: Sequence[Bucket]) -> list[Bucket]:
    """Import minus export per bucket of one partition (negative where more was fed in). The
    cost adds up (export is a credit, a negative cost), CO2 is the import's (export carries
    none), completeness covers both, and the peak is the import's."""
    negated = [
        replace(bucket, value=-bucket.value, peak_demand=0.0, peak_time_ms=bucket.start_ms)
        for bucket in exported
    ]
    return merge([imported, negated])


# Stored granularities, coarsest first: what `cover` tiles a range with.
COVER_LEVELS = (Granularity.MONTH, Granularity.DAY, Granularity.HOUR, Granularity.QUARTER_HOUR)


def cover(start_ms: int, end_ms: int, tz: ZoneInfo) -> list[tuple[Granularity, int, int]]:
    """The fewest stored buckets of zone tz (months, days, hours, quarter hours) that tile
    [start_ms, end_ms) exactly, as runs (granularity, first bucket's start, last bucket's
    end). The range must be aligned to quarter hours (aligned_range)."""
    pieces: list[tuple[Granularity, int, int]] = []

    def fill(lo: int, hi: int, level: int) -> None:
        if lo >= hi or level == len(COVER_LEVELS):
            return
        granularity = COVER_LEVELS[level]
        first = bucket_start(lo, granularity, tz)
        if first < lo:
            first = bucket_end(first, granularity, tz)
        last = bucket_start(hi, granularity, tz)
        if first >= last:
            fill(lo, hi, level + 1)
            return
        fill(lo, first, level + 1)
        pieces.append((granularity, first, last))
        fill(last, hi, level + 1)

    fill(start_ms, end_ms, 0)
    return pieces


# --- the same, column-wise (numpy), for the rollup consumer ----------------------------------


Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass
class Columns:
    """Buckets as columns (one entry per bucket, time-ordered): what `quarter_hours` returns,
    without a Python object per bucket. cost and co2_kg are NaN where unpriced."""

    start: Int64s
    end: Int64s
    value: Floats
    covered: Int64s
    readings: Int64s
    resets: Int64s
    rollovers: Int64s
    peak_demand: Floats
    peak_time: Int64s
    cost: Floats
    co2_kg: Floats

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def of(cls, buckets: Sequence[Bucket]) -> Columns:
        def column(values: Iterable[float | int | None], dtype: type) -> npt.NDArray[Any]:
            return np.array([np.nan if v is None else v for v in values], dtype=dtype)

        return cls(
            start=column((b.start_ms for b in buckets), np.int64),
            end=column((b.end_ms for b in buckets), np.int64),
            value=column((b.value for b in buckets), np.float64),
            covered=column((b.covered_ms for b in buckets), np.int64),
            readings=column((b.readings for b in buckets), np.int64),
            resets=column((b.resets for b in buckets), np.int64),
            rollovers=column((b.rollovers for b in buckets), np.int64),
            peak_demand=column((b.peak_demand for b in buckets), np.float64),
            peak_time=column((b.peak_time_ms for b in buckets), np.int64),
            cost=column((b.cost for b in buckets), np.float64),
            co2_kg=column((b.co2_kg for b in buckets), np.float64),
        )

    def take(self, order: npt.NDArray[np.intp]) -> Columns:
        """The buckets in the given order (e.g. an argsort)."""
        return Columns(*(getattr(self, f.name)[order] for f in fields(self)))

    def buckets(self) -> list[Bucket]:
        # Through lists: indexing numpy arrays element by element is slow.
        cost = [None if math.isnan(c) else c for c in self.cost.tolist()]
        co2 = [None if math.isnan(c) else c for c in self.co2_kg.tolist()]
        return [
            Bucket(*row)  # the fields' order: start_ms, end_ms, …, cost, co2_kg
            for row in zip(
                self.start.tolist(),
                self.end.tolist(),
                self.value.tolist(),
                self.covered.tolist(),
                self.readings.tolist(),
                self.resets.tolist(),
                self.rollovers.tolist(),
                self.peak_demand.tolist(),
                self.peak_time.tolist(),
                cost,
                co2,
                strict=True,
            )
        ]


def _quarter_boundaries(lo: int, hi: int, tz: ZoneInfo) -> Int64s:
    """Boundaries of the quarter hours of [lo, hi) (aligned): every UTC multiple of 15 minutes
    when the zone's offsets over the range are whole quarter hours (every zone since 1980)."""
    day = 24 * MS_PER_HOUR
    samples = [*range(lo, hi, day), hi]
    if all(_offset_ms(tz, t) % QUARTER_HOUR_MS == 0 for t in samples) and lo % QUARTER_HOUR_MS == 0:
        return np.arange(lo, hi + 1, QUARTER_HOUR_MS, dtype=np.int64)
    spans = bucket_spans(lo, hi, Granularity.QUARTER_HOUR, tz)
    return np.array([s for s, _ in spans] + [spans[-1][1]] if spans else [lo], dtype=np.int64)


def _at(boundaries: Int64s, times: Int64s) -> Int64s:
    """Index of the quarter holding each time (-1 or len-1 and beyond: outside)."""
    return np.searchsorted(boundaries, times, side="right") - 1


def _count(index: Int64s, size: int) -> Int64s:
    inside = (index >= 0) & (index < size)
    return np.bincount(index[inside], minlength=size).astype(np.int64)


def quarter_columns(
    times: Int64s, values: Floats, spec: MeterSpec, start_ms: int, end_ms: int
) -> Columns:
    """`quarter_hours` column-wise: the same numbers (up to floating-point rounding), from
    time-ordered readings with distinct times that include `window(...)` of the range.

    Consumption over [a, b) is F(b) - F(a) for the meter's cumulative consumption F, linear
    between readings (which is what spreading each pair's difference linearly means), so every
    quarter hour is one interpolation; covered time likewise. INTERVAL readings whose
    intervals overlap fall back to quarter_hours."""
    tz = spec.zone
    lo, hi = aligned_range(start_ms, end_ms, Granularity.QUARTER_HOUR, tz)
    edges = _quarter_boundaries(lo, hi, tz)
    size = len(edges) - 1
    unit = normalise_unit(spec.unit)
    scale = spec.multiplier * unit.factor
    interval = spec.expected_interval_ms
    t = np.asarray(times, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    resets = np.zeros(size, dtype=np.int64)
    rollovers = np.zeros(size, dtype=np.int64)
    if spec.register_type is RegisterType.INTERVAL:
        if len(t) > 1 and np.any(t[1:] - interval < t[:-1]):
            return Columns.of(quarter_hours(map(Reading, t.tolist(), v.tolist()), spec, lo, hi))
        readings = _count(_at(edges, t - 1), size)
        amounts = np.maximum(v, 0.0) * scale
        knots = np.empty(2 * len(t), dtype=np.float64)
        knots[0::2], knots[1::2] = t - interval, t
        level = np.concatenate([[0.0], np.cumsum(amounts)])
        cumulative = np.repeat(level, 2)[1:-1]
        cover_level = np.arange(len(t) + 1, dtype=np.float64) * interval
        covered_cumulative = np.repeat(cover_level, 2)[1:-1]
    else:
        readings = _count(_at(edges, t), size)
        dt = np.diff(t)
        covered_pair = dt <= GAP_TOLERANCE * interval
        knots = t.astype(np.float64)
        covered_cumulative = np.concatenate([[0.0], np.cumsum(np.where(covered_pair, dt, 0))])
        if spec.register_type is RegisterType.INSTANTANEOUS:
            rate = v * scale
            areas = dt / MS_PER_HOUR * (rate[:-1] + rate[1:]) / 2
            cumulative = np.concatenate([[0.0], np.cumsum(areas)])
            return _columns(
                edges,
                _integral_at(edges.astype(np.float64), knots, rate, cumulative),
                np.interp(edges, knots, covered_cumulative) if len(t) else np.zeros(size + 1),
                readings,
                resets,
                rollovers,
            )
        delta = np.diff(v)
        drop = delta < 0
        wrap = np.zeros_like(drop)
        rollover = spec.rollover_value
        if rollover is not None and drop.any():
            previous, current = v[:-1], v[1:]
            wrapped = (rollover - previous) + current
            wrap = (
                drop
                & (current >= 0)
                & (previous <= rollover)
                & (current < rollover)
                & (wrapped <= MAX_WRAP_FRACTION * rollover)
            )
            delta = np.where(wrap, wrapped, delta)
        reset = drop & ~wrap
        delta = np.where(reset, 0.0, delta)
        later = _at(edges, t[1:])
        resets = _count(later[reset], size)
        rollovers = _count(later[wrap], size)
        cumulative = np.concatenate([[0.0], np.cumsum(delta * scale)])
    if len(t) == 0:
        zeros = np.zeros(size + 1)
        return _columns(edges, zeros, zeros, readings, resets, rollovers)
    return _columns(
        edges,
        np.interp(edges, knots, cumulative),
        np.interp(edges, knots, covered_cumulative),
        readings,
        resets,
        rollovers,
    )


def _integral_at(x: Floats, knots: Floats, rate: Floats, cumulative: Floats) -> Floats:
    """The trapezoid integral (rate x hours) of rate samples up to each x (constant outside)."""
    if len(knots) < 2:
        return np.zeros(len(x))
    clamped = np.clip(x, knots[0], knots[-1])
    i = np.clip(np.searchsorted(knots, clamped, side="right") - 1, 0, len(knots) - 2)
    span = knots[i + 1] - knots[i]
    offset = clamped - knots[i]
    slope = (rate[i + 1] - rate[i]) / span
    at = rate[i] + slope * offset
    result: Floats = cumulative[i] + offset / MS_PER_HOUR * (rate[i] + at) / 2
    return result


def _columns(
    edges: Int64s,
    cumulative_at_edges: Floats,
    covered_at_edges: Floats,
    readings: Int64s,
    resets: Int64s,
    rollovers: Int64s,
) -> Columns:
    start, end = edges[:-1], edges[1:]
    value = np.diff(cumulative_at_edges)
    length = end - start
    covered = np.minimum(np.rint(np.diff(covered_at_edges)).astype(np.int64), length)
    nan = np.full(len(start), np.nan)
    return Columns(
        start=start,
        end=end,
        value=value,
        covered=covered,
        readings=readings,
        resets=resets,
        rollovers=rollovers,
        peak_demand=value * MS_PER_HOUR / length,
        peak_time=start.copy(),
        cost=nan,
        co2_kg=nan.copy(),
    )


@lru_cache(maxsize=65_536)
def _spans_in_day(day_start: int, granularity: Granularity, zone_name: str) -> tuple[int, ...]:
    """Starts of the buckets of one local day (and the day's end), cached: every meter of a
    zone shares them."""
    tz = _zone(zone_name)
    day_end = bucket_end(day_start, Granularity.DAY, tz)
    if granularity is Granularity.DAY:
        return (day_start, day_end)
    return (*(start for start, _ in bucket_spans(day_start, day_end, granularity, tz)), day_end)


def bucket_edges(lo: int, hi: int, granularity: Granularity, zone_name: str) -> Int64s:
    """Boundaries of the buckets (HOUR or DAY) overlapping [lo, hi): bucket_spans, cached per
    local day."""
    tz = _zone(zone_name)
    day_lo, day_hi = aligned_range(lo, hi, Granularity.DAY, tz)
    edges = [day_lo]
    for day_start, _ in bucket_spans(day_lo, day_hi, Granularity.DAY, tz):
        edges.extend(_spans_in_day(day_start, granularity, zone_name)[1:])
    found = np.array(edges, dtype=np.int64)
    first = int(np.searchsorted(found, lo, side="right")) - 1
    last = int(np.searchsorted(found, hi, side="left"))
    return found[first : last + 1]
