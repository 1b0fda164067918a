"""Analytics pricing of rollup quarter hours, the pricing.changed event, and the checks and
conversions of tariffs as the API receives them."""

from __future__ import annotations

import math
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2
from energymesh.devices.v1 import devices_pb2
from services.analytics.pricing import PriceList, PricingChange, price
from services.analytics.rollups import (
    Bucket,
    Granularity,
    aggregate,
    bucket_spans,
    known_sum,
    local_midnight_ms,
)
from services.analytics.tariff_validation import (
    check_emission_factor,
    check_tariff,
    pricing_tariff,
    versions_from_json,
    versions_to_json,
)
from services.analytics.tariffs import (
    DayType,
    EmissionFactor,
    Tariff,
    TariffVersion,
    Tier,
)
from services.kernel.errors import Violations
from services.kernel.messaging import PoisonMessage

ZONE = "Europe/Berlin"
BERLIN = ZoneInfo(ZONE)


def midnight(day: date) -> int:
    return local_midnight_ms(day, BERLIN)


def quarters(first: date, last: date, amount: float = 1.0) -> list[Bucket]:
    spans = bucket_spans(
        midnight(first), midnight(last + timedelta(days=1)), Granularity.QUARTER_HOUR, BERLIN
    )
    return [Bucket(s, e, amount, e - s, 1, 0, 0, 0.0, s) for s, e in spans]


def stamp(day: date) -> timestamp_pb2.Timestamp:
    moment = timestamp_pb2.Timestamp()
    moment.FromMilliseconds(midnight(day))
    return moment


# --- pricing quarter hours ----------------------------------------------------------------------


def test_unpriced_without_tariff_or_factor() -> None:
    priced = price(quarters(date(2026, 5, 4), date(2026, 5, 4)), PriceList(ZONE))
    assert all(q.cost is None and q.co2_kg is None for q in priced)
    [day] = aggregate(priced, Granularity.DAY, ZONE)
    assert day.cost is None
    assert day.co2_kg is None


def test_quarter_hours_no_version_or_factor_covers_stay_unpriced() -> None:
    start = midnight(date(2026, 5, 5))
    prices = PriceList(
        ZONE,
        Tariff((TariffVersion(effective_from_ms=start, flat_price=0.2),)),
        currency="EUR",
        factors=(EmissionFactor(0.5, midnight(date(2026, 5, 4)), start + 3_600_000),),
    )
    priced = price(quarters(date(2026, 5, 4), date(2026, 5, 5)), prices)
    first, second = aggregate(priced, Granularity.DAY, ZONE)
    assert first.cost is None
    assert second.cost == pytest.approx(96 * 0.2)
    assert first.co2_kg == pytest.approx(96 * 0.5)
    assert second.co2_kg == pytest.approx(4 * 0.5)  # the factor ends an hour into the day
    assert prices.currency_of(priced[0]) is None
    assert prices.currency_of(priced[-1]) == "EUR"


def test_tiers_count_the_month_before_and_restart_with_the_next_month() -> None:
    tariff = Tariff(
        (TariffVersion(effective_from_ms=0, tiers=(Tier(0.1, up_to=100.0), Tier(0.3))),)
    )
    prices = PriceList(ZONE, tariff, "EUR")
    assert prices.tiered
    # 30 April and 1 May, 1 kWh per quarter hour, 50 kWh consumed earlier in April.
    priced = price(quarters(date(2026, 4, 30), date(2026, 5, 1)), prices, month_to_date=50.0)
    april, may = aggregate(priced, Granularity.DAY, ZONE)
    assert april.cost == pytest.approx(50 * 0.1 + 46 * 0.3)
    assert may.cost == pytest.approx(96 * 0.1)


def test_tiers_count_consumption_where_no_version_is_in_force() -> None:
    noon = midnight(date(2026, 6, 2)) + 12 * 3_600_000
    tariff = Tariff(
        (TariffVersion(effective_from_ms=noon, tiers=(Tier(0.1, up_to=100.0), Tier(0.3))),)
    )
    priced = price(quarters(date(2026, 6, 1), date(2026, 6, 2)), PriceList(ZONE, tariff, "EUR"))
    # 144 kWh before noon on the 2nd: the afternoon is all in the upper block.
    assert math.fsum(q.cost for q in priced if q.cost is not None) == pytest.approx(48 * 0.3)
    assert all(q.cost is None for q in priced if q.start_ms < noon)


def test_export_is_credited_without_co2() -> None:
    tariff = Tariff((TariffVersion(effective_from_ms=0, flat_price=0.3, feed_in_price=0.08),))
    prices = PriceList(ZONE, tariff, "EUR", export=True, factors=(EmissionFactor(0.4, 0),))
    assert not prices.tiered
    priced = price(quarters(date(2026, 7, 1), date(2026, 7, 1), amount=2.0), prices)
    [day] = aggregate(priced, Granularity.DAY, ZONE)
    assert day.cost == pytest.approx(-96 * 2.0 * 0.08)
    assert day.co2_kg is None


def test_known_sum() -> None:
    assert known_sum([]) is None
    assert known_sum([None, None]) is None
    assert known_sum([None, 1.5, 2.0]) == 3.5


# --- the pricing.changed event ------------------------------------------------------------------


def test_pricing_change_round_trips_through_its_event() -> None:
    from google.protobuf import json_format

    change = PricingChange(
        organization_id="org",
        commodity=devices_pb2.COMMODITY_GAS,
        site_id="site",
        direction=devices_pb2.FLOW_DIRECTION_EXPORT,
        start_ms=midnight(date(2026, 3, 1)),
        end_ms=None,
        reason="tariff.updated",
    )
    data = json_format.MessageToJson(change.to_event(), indent=None).encode()
    assert PricingChange.from_event(data) == change
    org_wide = PricingChange("org", devices_pb2.COMMODITY_ELECTRICITY)
    data = json_format.MessageToJson(org_wide.to_event(), indent=None).encode()
    assert PricingChange.from_event(data) == org_wide
    for malformed in (b"{}", b"not json", b'{"organizationId": "o", "commodity": "COAL"}'):
        with pytest.raises(PoisonMessage):
            PricingChange.from_event(malformed)


# --- checks and conversions of tariffs ----------------------------------------------------------


def tou_version() -> analytics_pb2.TariffVersion:
    return analytics_pb2.TariffVersion(
        effective_from=stamp(date(2026, 1, 1)),
        effective_to=stamp(date(2026, 7, 1)),
        flat_price=0.25,
        windows=[
            analytics_pb2.TimeOfUseWindow(
                price=0.4,
                start_minute=480,
                end_minute=1200,
                day_types=[analytics_pb2.DAY_TYPE_WEEKDAY],
            ),
            # Start and end equal: the whole day (the proto defaults, 0 and 0).
            analytics_pb2.TimeOfUseWindow(
                price=0.15, day_types=[analytics_pb2.DAY_TYPE_HOLIDAY], months=[4]
            ),
        ],
        standing_charge_per_day=0.5,
        holidays=["2026-04-03"],
    )


def test_a_valid_tariff_has_no_violations_and_converts() -> None:
    later = analytics_pb2.TariffVersion(
        effective_from=stamp(date(2026, 7, 1)),
        tiers=[analytics_pb2.TariffTier(price=0.1, up_to=100), analytics_pb2.TariffTier(price=0.2)],
    )
    tariff = analytics_pb2.Tariff(name="TOU", currency_code="EUR", versions=[later, tou_version()])
    violations = Violations()
    check_tariff(violations, "tariff.", tariff)
    assert violations.items == []

    stored = versions_to_json(tariff.versions)
    assert [v["effectiveFrom"] for v in stored] == ["2025-12-31T23:00:00Z", "2026-06-30T22:00:00Z"]
    assert versions_from_json(stored) == [tou_version(), later]
    converted = pricing_tariff(stored, "EUR")
    first, second = converted.versions
    assert first.effective_to_ms == second.effective_from_ms == midnight(date(2026, 7, 1))
    assert first.windows[0].day_types == frozenset({DayType.WEEKDAY})
    assert first.windows[1].months == frozenset({4})
    assert first.holidays == frozenset({date(2026, 4, 3)})
    assert second.tiers == (Tier(0.1, 100.0), Tier(0.2, None))
    assert second.effective_to_ms is None
    # Good Friday (a holiday) is priced by the all-day holiday window.
    good_friday = quarters(date(2026, 4, 3), date(2026, 4, 3))
    [day] = aggregate(price(good_friday, PriceList(ZONE, converted, "EUR")), Granularity.DAY, ZONE)
    assert day.cost == pytest.approx(96 * 0.15 + 0.5)


def check(tariff: analytics_pb2.Tariff) -> set[str]:
    violations = Violations()
    check_tariff(violations, "tariff.", tariff)
    return {field for field, _ in violations.items}


def test_every_rule_reports_its_field() -> None:
    version = tou_version()
    assert check(analytics_pb2.Tariff()) == {
        "tariff.name",
        "tariff.currency_code",
        "tariff.versions",
    }
    open_ended = analytics_pb2.TariffVersion(effective_from=stamp(date(2025, 12, 1)))
    overlapping = analytics_pb2.Tariff(
        name="T", currency_code="EUR", versions=[open_ended, version]
    )
    assert check(overlapping) == {"tariff.versions[1].effective_from"}
    bad = analytics_pb2.TariffVersion(
        effective_from=stamp(date(2026, 2, 1)),
        effective_to=stamp(date(2026, 1, 1)),
        flat_price=math.nan,
        feed_in_price=-1,
        standing_charge_per_day=math.inf,
        windows=[
            analytics_pb2.TimeOfUseWindow(
                price=-1,
                start_minute=1441,
                end_minute=-5,
                day_types=[analytics_pb2.DAY_TYPE_UNSPECIFIED],
                months=[13],
            )
        ],
        tiers=[analytics_pb2.TariffTier(price=0.1), analytics_pb2.TariffTier(price=0.2, up_to=5)],
        holidays=["2026-13-01"],
    )
    assert check(analytics_pb2.Tariff(name="T", currency_code="EUR", versions=[bad])) == {
        "tariff.versions[0].effective_to",
        "tariff.versions[0].flat_price",
        "tariff.versions[0].feed_in_price",
        "tariff.versions[0].standing_charge_per_day",
        "tariff.versions[0].windows[0].price",
        "tariff.versions[0].windows[0].start_minute",
        "tariff.versions[0].windows[0].end_minute",
        "tariff.versions[0].windows[0].day_types[0]",
        "tariff.versions[0].windows[0].months[0]",
        "tariff.versions[0].tiers[0].up_to",
        "tariff.versions[0].tiers[1].up_to",
        "tariff.versions[0].holidays[0]",
    }
    too_many = analytics_pb2.TariffVersion(
        effective_from=stamp(date(2026, 1, 1)),
        windows=[analytics_pb2.TimeOfUseWindow(price=0.1)] * 49,
        tiers=[analytics_pb2.TariffTier(price=0.1, up_to=i + 1) for i in range(20)]
        + [analytics_pb2.TariffTier(price=0.1)],
        holidays=["2026-01-01"] * 401,
    )
    assert check(
        analytics_pb2.Tariff(name="T" * 201, currency_code="Eur", versions=[too_many])
    ) == {
        "tariff.name",
        "tariff.currency_code",
        "tariff.versions[0].windows",
        "tariff.versions[0].tiers",
        "tariff.versions[0].holidays",
    }


def test_emission_factor_rules() -> None:
    violations = Violations()
    check_emission_factor(violations, "f.", analytics_pb2.EmissionFactor(kg_per_unit=-0.1))
    assert {field for field, _ in violations.items} == {
        "f.commodity",
        "f.kg_per_unit",
        "f.effective_from",
    }
    fine = Violations()
    check_emission_factor(
        fine,
        "f.",
        analytics_pb2.EmissionFactor(
            commodity=devices_pb2.COMMODITY_HEAT,
            kg_per_unit=0.0,
            effective_from=stamp(date(2026, 1, 1)),
        ),
    )
    assert fine.items == []
