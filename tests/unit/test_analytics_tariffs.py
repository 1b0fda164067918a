"""Analytics tariffs: TOU with a mid-month change, seasons, holidays, tiers, standing charge,
feed-in and CO2."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.analytics.rollups import Bucket, Granularity, bucket_spans, local_midnight_ms
from services.analytics.tariffs import (
    DayType,
    EmissionFactor,
    Tariff,
    TariffError,
    TariffVersion,
    Tier,
    TouWindow,
    emissions,
    price_quarters,
    sum_by,
)

ZONE = "Europe/Berlin"
BERLIN = ZoneInfo(ZONE)
WEEKDAYS = frozenset({DayType.WEEKDAY})
WEEKEND = frozenset({DayType.WEEKEND, DayType.HOLIDAY})


def midnight(day: date) -> int:
    return local_midnight_ms(day, BERLIN)


def quarters(first: date, last: date, amount: Callable[[int], float] | float = 1.0) -> list[Bucket]:
    """Quarter hours of local days first..last (inclusive), each with the given amount."""
    spans = bucket_spans(
        midnight(first), midnight(last + timedelta(days=1)), Granularity.QUARTER_HOUR, BERLIN
    )
    return [
        Bucket(s, e, amount(s) if callable(amount) else amount, e - s, 1, 0, 0, 0.0, s)
        for s, e in spans
    ]


def by_day(buckets: list[Bucket], costs: list[float]) -> dict[date, float]:
    from datetime import datetime

    return {
        datetime.fromtimestamp(start / 1000, BERLIN).date(): value
        for start, value in sum_by(buckets, costs, Granularity.DAY, ZONE).items()
    }


def tou(
    from_ms: int, to_ms: int | None, peak: float, off_peak: float, weekend: float
) -> TariffVersion:
    return TariffVersion(
        effective_from_ms=from_ms,
        effective_to_ms=to_ms,
        flat_price=off_peak,
        windows=(
            TouWindow(price=peak, start_minute=8 * 60, end_minute=20 * 60, day_types=WEEKDAYS),
            TouWindow(price=weekend, day_types=WEEKEND),
        ),
        holidays=frozenset({date(2026, 3, 17)}),
    )


def test_tou_tariff_with_a_price_change_on_the_15th_prices_both_halves() -> None:
    change = midnight(date(2026, 3, 15))
    tariff = Tariff(
        (
            tou(midnight(date(2026, 1, 1)), change, peak=0.40, off_peak=0.20, weekend=0.15),
            tou(change, None, peak=0.50, off_peak=0.25, weekend=0.18),
        )
    )
    march = quarters(date(2026, 3, 1), date(2026, 3, 31))
    daily = by_day(march, price_quarters(march, tariff, ZONE))
    assert daily[date(2026, 3, 13)] == pytest.approx(48 * 0.40 + 48 * 0.20)  # Friday, old
    assert daily[date(2026, 3, 14)] == pytest.approx(96 * 0.15)  # Saturday, old
    assert daily[date(2026, 3, 15)] == pytest.approx(96 * 0.18)  # Sunday, new
    assert daily[date(2026, 3, 16)] == pytest.approx(48 * 0.50 + 48 * 0.25)  # Monday, new
    assert daily[date(2026, 3, 17)] == pytest.approx(96 * 0.18)  # a holiday, weekend price
    assert daily[date(2026, 3, 29)] == pytest.approx(92 * 0.18)  # 23-hour Sunday
    # An independent count: 10 weekdays and 4 weekend days before the change; after it
    # 11 weekdays, 1 holiday and 5 weekend days, one of them 23 hours long.
    expected = (
        10 * (48 * 0.40 + 48 * 0.20)
        + 4 * 96 * 0.15
        + 11 * (48 * 0.50 + 48 * 0.25)
        + (1 + 5) * 96 * 0.18
        - 4 * 0.18
    )
    assert math.fsum(daily.values()) == pytest.approx(expected)


def test_seasons_and_windows_across_midnight() -> None:
    version = TariffVersion(
        effective_from_ms=0,
        flat_price=0.30,
        windows=(
            TouWindow(price=0.10, start_minute=22 * 60, end_minute=6 * 60),  # night, all year
            TouWindow(price=0.50, start_minute=12 * 60, end_minute=15 * 60, months=frozenset({7})),
        ),
    )
    tariff = Tariff((version,))
    for day, expected in (
        (date(2026, 7, 1), 32 * 0.10 + 12 * 0.50 + 52 * 0.30),
        (date(2026, 1, 7), 32 * 0.10 + 64 * 0.30),
    ):
        day_quarters = quarters(day, day)
        assert math.fsum(price_quarters(day_quarters, tariff, ZONE)) == pytest.approx(expected)


def test_tiered_blocks_per_billing_month_split_a_quarter_hour_crossing_a_threshold() -> None:
    tariff = Tariff(
        (TariffVersion(effective_from_ms=0, tiers=(Tier(0.20, up_to=100.0), Tier(0.30))),)
    )
    buckets = quarters(date(2026, 4, 30), date(2026, 5, 2), 1.5)
    daily = by_day(buckets, price_quarters(buckets, tariff, ZONE))
    # April 30 starts the sample mid-month with 50 kWh already used this month.
    april = quarters(date(2026, 4, 30), date(2026, 4, 30), 1.5)
    assert math.fsum(price_quarters(april, tariff, ZONE, month_to_date=50.0)) == pytest.approx(
        50 * 0.20 + (144 - 50) * 0.30
    )
    assert daily[date(2026, 4, 30)] == pytest.approx(100 * 0.20 + 44 * 0.30)
    # May: the block starts again; 1.5 kWh per quarter hour crosses 100 kWh inside a quarter.
    assert daily[date(2026, 5, 1)] == pytest.approx(100 * 0.20 + 44 * 0.30)
    assert daily[date(2026, 5, 2)] == pytest.approx(144 * 0.30)


def test_standing_charge_is_counted_once_per_day_on_23_and_25_hour_days() -> None:
    tariff = Tariff((TariffVersion(effective_from_ms=0, standing_charge_per_day=0.48),))
    for day, hours in ((date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)):
        buckets = quarters(day, day, 0.0)
        costs = price_quarters(buckets, tariff, ZONE)
        hourly = sum_by(buckets, costs, Granularity.HOUR, ZONE)
        assert len(hourly) == hours
        assert math.fsum(hourly.values()) == pytest.approx(0.48)
        assert list(sum_by(buckets, costs, Granularity.DAY, ZONE).values()) == [pytest.approx(0.48)]
    month = quarters(date(2026, 10, 1), date(2026, 10, 31), 0.0)
    assert math.fsum(price_quarters(month, tariff, ZONE)) == pytest.approx(31 * 0.48)


def test_export_is_credited_at_the_feed_in_price_without_standing_charge() -> None:
    tariff = Tariff(
        (
            TariffVersion(
                effective_from_ms=0, flat_price=0.3, feed_in_price=0.08, standing_charge_per_day=1.0
            ),
        )
    )
    buckets = quarters(date(2026, 6, 1), date(2026, 6, 1), 0.5)
    assert math.fsum(price_quarters(buckets, tariff, ZONE, export=True)) == pytest.approx(
        -96 * 0.5 * 0.08
    )


def test_overlapping_versions_and_gaps_are_refused() -> None:
    with pytest.raises(TariffError):
        Tariff((TariffVersion(effective_from_ms=0), TariffVersion(effective_from_ms=10)))
    with pytest.raises(TariffError):
        Tariff(
            (
                TariffVersion(effective_from_ms=0, effective_to_ms=5, currency="EUR"),
                TariffVersion(effective_from_ms=5, currency="USD"),
            )
        )
    late = Tariff((TariffVersion(effective_from_ms=midnight(date(2026, 6, 2))),))
    with pytest.raises(TariffError):
        price_quarters(quarters(date(2026, 6, 1), date(2026, 6, 1)), late, ZONE)


def test_emission_factors_apply_with_their_effective_dates() -> None:
    change = midnight(date(2026, 1, 2))
    factors = [EmissionFactor(0.40, 0, change), EmissionFactor(0.35, change)]
    buckets = quarters(date(2026, 1, 1), date(2026, 1, 2), 2.0)
    daily = by_day(buckets, emissions(buckets, factors))
    assert daily == {
        date(2026, 1, 1): pytest.approx(96 * 2 * 0.40),
        date(2026, 1, 2): pytest.approx(96 * 2 * 0.35),
    }
