"""Tariff pricing and CO2 per quarter hour: pure functions over rollup quarter hours.

Cost is computed per quarter hour and coarser buckets sum their quarter hours, so a day's cost
is the sum of its hours' costs whatever the granularity asked.

A tariff is a list of versions, each in force over [effective_from_ms, effective_to_ms) (open
end when effective_to_ms is None). A quarter hour is priced with the version in force at its
start, so a price change on the 15th of a month prices each half with its own version.

The energy price of a version, in order of precedence:
- tiered blocks (`tiers`): the price depends on how much was consumed earlier in the same
  billing month (the site's local calendar month); a quarter hour crossing a block threshold
  is split between the two prices. The monthly total carries across version changes within
  the month.
- time-of-use windows (`windows`): the first window matching the quarter hour's local start
  (day type, time of day, month for seasons) gives the price;
- otherwise `flat_price`.
The standing charge is per local day and spread over the day's quarter hours by their share
of the day's duration, so a 23- or 25-hour DST day still carries exactly one charge. Export
(feed-in) quarter hours are credited at `feed_in_price` (a negative cost) with no standing
charge. Prices are per canonical unit (kWh or m3) in the tariff's currency.

Emission factors (kg CO2e per canonical unit) are versioned the same way and applied per
quarter hour.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from zoneinfo import ZoneInfo

from services.analytics.rollups import (
    MS_PER_SECOND,
    Bucket,
    Granularity,
    bucket_end,
    bucket_start,
)

MINUTES_PER_DAY = 1440


class DayType(Enum):
    WEEKDAY = "WEEKDAY"
    WEEKEND = "WEEKEND"
    HOLIDAY = "HOLIDAY"


ALL_DAYS = frozenset(DayType)
ALL_MONTHS = frozenset(range(1, 13))


class TariffError(ValueError):
    """A tariff that cannot price a bucket (no version in force, an inconsistent definition)."""


@dataclass(frozen=True)
class TouWindow:
    """A time-of-use window: local times [start_minute, end_minute) after midnight on days of
    the given types in the given months. end_minute may be 1440 (midnight); a window with
    end_minute <= start_minute wraps past midnight (22:00-06:00)."""

    price: float
    start_minute: int = 0
    end_minute: int = MINUTES_PER_DAY
    day_types: frozenset[DayType] = ALL_DAYS
    months: frozenset[int] = ALL_MONTHS

    def matches(self, day_type: DayType, month: int, minute: int) -> bool:
        if day_type not in self.day_types or month not in self.months:
            return False
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute


@dataclass(frozen=True)
class Tier:
    """A block of monthly consumption: up to `up_to` (cumulative within the billing month,
    None for the last, open block) costs `price` per unit."""

    price: float
    up_to: float | None = None


@dataclass(frozen=True)
class TariffVersion:
    effective_from_ms: int
    effective_to_ms: int | None = None
    currency: str = "EUR"
    flat_price: float = 0.0
    windows: tuple[TouWindow, ...] = ()
    tiers: tuple[Tier, ...] = ()
    standing_charge_per_day: float = 0.0
    feed_in_price: float = 0.0
    holidays: frozenset[date] = field(default_factory=frozenset)

    def in_force(self, t_ms: int) -> bool:
        return self.effective_from_ms <= t_ms and (
            self.effective_to_ms is None or t_ms < self.effective_to_ms
        )


@dataclass(frozen=True)
class Tariff:
    versions: tuple[TariffVersion, ...]

    def __post_init__(self) -> None:
        ordered = sorted(self.versions, key=lambda v: v.effective_from_ms)
        for a, b in itertools.pairwise(ordered):
            if a.effective_to_ms is None or a.effective_to_ms > b.effective_from_ms:
                raise TariffError("tariff versions overlap")
        if len({v.currency for v in ordered}) > 1:
            raise TariffError("all versions of a tariff use one currency")
        object.__setattr__(self, "versions", tuple(ordered))

    def version_at(self, t_ms: int) -> TariffVersion | None:
        for version in self.versions:
            if version.in_force(t_ms):
                return version
        return None


@dataclass(frozen=True)
class EmissionFactor:
    kg_per_unit: float
    effective_from_ms: int
    effective_to_ms: int | None = None


def day_type(day: date, holidays: frozenset[date]) -> DayType:
    if day in holidays:
        return DayType.HOLIDAY
    return DayType.WEEKEND if day.weekday() >= 5 else DayType.WEEKDAY


def unit_price(version: TariffVersion, t_ms: int, tz: ZoneInfo) -> float:
    """The time-of-use or flat price at instant t_ms (ignores tiers)."""
    local = datetime.fromtimestamp(t_ms // MS_PER_SECOND, tz)
    kind = day_type(local.date(), version.holidays)
    minute = local.hour * 60 + local.minute
    for window in version.windows:
        if window.matches(kind, local.month, minute):
            return window.price
    return version.flat_price


def _tiered_cost(tiers: Sequence[Tier], already: float, amount: float) -> float:
    """Cost of `amount` consumed after `already` in the billing month."""
    parts = []
    position, remaining = already, amount
    for tier in tiers:
        if remaining <= 0:
            break
        if tier.up_to is not None and position >= tier.up_to:
            continue
        room = remaining if tier.up_to is None else min(remaining, tier.up_to - position)
        parts.append(room * tier.price)
        position += room
        remaining -= room
    if remaining > 0:
        raise TariffError("the last tier must be open (up_to unset)")
    return math.fsum(parts)


def price_quarters(
    quarters: Sequence[Bucket],
    tariff: Tariff,
    time_zone: str,
    *,
    export: bool = False,
    month_to_date: float = 0.0,
) -> list[float]:
    """Cost of each quarter hour (time-ordered, contiguous).

    month_to_date: consumption already counted in the billing month of the first quarter hour
    before it (for tiers; 0 when the quarters start at the month's start). Export quarter hours
    get a negative cost (a credit). Raises TariffError for a quarter hour no version covers.
    """
    tz = ZoneInfo(time_zone)
    costs: list[float] = []
    month_start: int | None = None
    month_total = month_to_date
    day_span: tuple[int, int] | None = None
    for quarter in quarters:
        version = tariff.version_at(quarter.start_ms)
        if version is None:
            raise TariffError(f"no tariff version in force at {quarter.start_ms}")
        if export:
            costs.append(-quarter.value * version.feed_in_price)
            continue
        if day_span is None or not day_span[0] <= quarter.start_ms < day_span[1]:
            start = bucket_start(quarter.start_ms, Granularity.DAY, tz)
            day_span = (start, bucket_end(start, Granularity.DAY, tz))
        standing = (
            version.standing_charge_per_day
            * (quarter.end_ms - quarter.start_ms)
            / (day_span[1] - day_span[0])
        )
        if version.tiers:
            this_month = bucket_start(quarter.start_ms, Granularity.MONTH, tz)
            if month_start is not None and this_month != month_start:
                month_total = 0.0
            month_start = this_month
            energy = _tiered_cost(version.tiers, month_total, quarter.value)
            month_total += quarter.value
        else:
            energy = quarter.value * unit_price(version, quarter.start_ms, tz)
        costs.append(energy + standing)
    return costs


def emissions(quarters: Sequence[Bucket], factors: Sequence[EmissionFactor]) -> list[float]:
    """kg CO2e of each quarter hour, with the factor in force at its start (0 when none is)."""
    out = []
    for quarter in quarters:
        factor = next(
            (
                f
                for f in factors
                if f.effective_from_ms <= quarter.start_ms
                and (f.effective_to_ms is None or quarter.start_ms < f.effective_to_ms)
            ),
            None,
        )
        out.append(quarter.value * factor.kg_per_unit if factor else 0.0)
    return out


def sum_by(
    quarters: Sequence[Bucket], amounts: Sequence[float], granularity: Granularity, time_zone: str
) -> dict[int, float]:
    """Per-quarter amounts (cost, CO2) summed into the buckets of a granularity, by bucket start."""
    tz = ZoneInfo(time_zone)
    groups: dict[int, list[float]] = {}
    for quarter, amount in zip(quarters, amounts, strict=True):
        groups.setdefault(bucket_start(quarter.start_ms, granularity, tz), []).append(amount)
    return {start: math.fsum(values) for start, values in groups.items()}
