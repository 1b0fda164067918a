"""Tariffs and emission factors as the API receives them: their checks (field violations) and
their conversion to the pricing core's types (services/analytics/tariffs.py).

Tariff versions are stored as the proto3 JSON of energymesh.analytics.v1.TariffVersion, so
what was accepted is exactly what GetTariff answers and what prices the rollups.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from datetime import date
from typing import Any

from google.protobuf import json_format

from energymesh.analytics.v1 import analytics_pb2
from energymesh.devices.v1 import devices_pb2
from services.analytics import tariffs
from services.kernel.errors import Violations

MAX_NAME_LENGTH = 200
MAX_VERSIONS = 50
MAX_WINDOWS = 48
MAX_TIERS = 20
MAX_HOLIDAYS = 400
MINUTES_PER_DAY = tariffs.MINUTES_PER_DAY
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
HOLIDAY = re.compile(r"\d{4}-\d{2}-\d{2}")

COMMODITIES = frozenset(
    {
        devices_pb2.COMMODITY_ELECTRICITY,
        devices_pb2.COMMODITY_GAS,
        devices_pb2.COMMODITY_WATER,
        devices_pb2.COMMODITY_HEAT,
    }
)
DIRECTIONS = frozenset({devices_pb2.FLOW_DIRECTION_IMPORT, devices_pb2.FLOW_DIRECTION_EXPORT})
DAY_TYPES = {
    analytics_pb2.DAY_TYPE_WEEKDAY: tariffs.DayType.WEEKDAY,
    analytics_pb2.DAY_TYPE_WEEKEND: tariffs.DayType.WEEKEND,
    analytics_pb2.DAY_TYPE_HOLIDAY: tariffs.DayType.HOLIDAY,
}


def check_name(violations: Violations, field: str, name: str) -> None:
    if not name.strip():
        violations.add(field, "is required")
    elif len(name.strip()) > MAX_NAME_LENGTH:
        violations.add(field, f"must be at most {MAX_NAME_LENGTH} characters")


def check_currency(violations: Violations, field: str, code: str) -> None:
    if not CURRENCY_CODE.fullmatch(code):
        violations.add(field, "must be an ISO 4217 code of three capital letters, e.g. EUR")


def check_amount(violations: Violations, field: str, value: float) -> None:
    """A price or factor: a finite number, not negative."""
    if not math.isfinite(value) or value < 0:
        violations.add(field, "must be a finite number, not negative")


def check_commodity(violations: Violations, field: str, commodity: int) -> None:
    if commodity not in COMMODITIES:
        violations.add(field, "is required (a known commodity)")


def check_span(violations: Violations, prefix: str, message: Any) -> tuple[int, int | None] | None:
    """effective_from (required) and effective_to (after it, when set) of a version or factor,
    as milliseconds; None when they are not usable."""
    if not message.HasField("effective_from"):
        violations.add(f"{prefix}effective_from", "is required")
        return None
    start = message.effective_from.ToMilliseconds()
    end = message.effective_to.ToMilliseconds() if message.HasField("effective_to") else None
    if end is not None and end <= start:
        violations.add(f"{prefix}effective_to", "must be after effective_from")
        return None
    return start, end


def check_tariff(violations: Violations, prefix: str, tariff: analytics_pb2.Tariff) -> None:
    """Every rule of a whole tariff (what Create receives, or Update's result)."""
    check_name(violations, f"{prefix}name", tariff.name)
    check_currency(violations, f"{prefix}currency_code", tariff.currency_code)
    check_versions(violations, prefix, tariff.versions)


def check_versions(
    violations: Violations, prefix: str, versions: Sequence[analytics_pb2.TariffVersion]
) -> None:
    field = f"{prefix}versions"
    if not versions:
        violations.add(field, "at least one version is required")
        return
    if len(versions) > MAX_VERSIONS:
        violations.add(field, f"at most {MAX_VERSIONS} versions")
        return
    spans = []
    for i, version in enumerate(versions):
        span = check_version(violations, f"{field}[{i}].", version)
        if span is not None:
            spans.append((span[0], math.inf if span[1] is None else span[1], i))
    spans.sort()
    for (_, earlier_end, i), (later_start, _, j) in itertools.pairwise(spans):
        if earlier_end > later_start:
            violations.add(f"{field}[{j}].effective_from", f"overlaps versions[{i}]")


def check_version(
    violations: Violations, prefix: str, version: analytics_pb2.TariffVersion
) -> tuple[int, int | None] | None:
    span = check_span(violations, prefix, version)
    check_amount(violations, f"{prefix}flat_price", version.flat_price)
    check_amount(violations, f"{prefix}standing_charge_per_day", version.standing_charge_per_day)
    check_amount(violations, f"{prefix}feed_in_price", version.feed_in_price)
    check_windows(violations, f"{prefix}windows", version.windows)
    check_tiers(violations, f"{prefix}tiers", version.tiers)
    check_holidays(violations, f"{prefix}holidays", version.holidays)
    return span


def check_windows(
    violations: Violations, field: str, windows: Sequence[analytics_pb2.TimeOfUseWindow]
) -> None:
    if len(windows) > MAX_WINDOWS:
        violations.add(field, f"at most {MAX_WINDOWS} windows")
        return
    for i, window in enumerate(windows):
        prefix = f"{field}[{i}]."
        check_amount(violations, f"{prefix}price", window.price)
        for name in ("start_minute", "end_minute"):
            if not 0 <= getattr(window, name) <= MINUTES_PER_DAY:
                violations.add(f"{prefix}{name}", f"must be 0 to {MINUTES_PER_DAY}")
        for j, day_type in enumerate(window.day_types):
            if day_type not in DAY_TYPES:
                violations.add(f"{prefix}day_types[{j}]", "must be WEEKDAY, WEEKEND or HOLIDAY")
        for j, month in enumerate(window.months):
            if not 1 <= month <= 12:
                violations.add(f"{prefix}months[{j}]", "must be 1 to 12")


def check_tiers(
    violations: Violations, field: str, tiers: Sequence[analytics_pb2.TariffTier]
) -> None:
    if len(tiers) > MAX_TIERS:
        violations.add(field, f"at most {MAX_TIERS} tiers")
        return
    previous = 0.0
    for i, tier in enumerate(tiers):
        prefix = f"{field}[{i}]."
        check_amount(violations, f"{prefix}price", tier.price)
        last = i == len(tiers) - 1
        if last:
            if tier.HasField("up_to"):
                violations.add(f"{prefix}up_to", "must be unset: the last tier is open")
        elif not tier.HasField("up_to"):
            violations.add(f"{prefix}up_to", "is required except on the last tier")
        elif not math.isfinite(tier.up_to) or tier.up_to <= previous:
            violations.add(f"{prefix}up_to", "must be finite and above the previous tier's")
        else:
            previous = tier.up_to


def check_holidays(violations: Violations, field: str, holidays: Sequence[str]) -> None:
    if len(holidays) > MAX_HOLIDAYS:
        violations.add(field, f"at most {MAX_HOLIDAYS} dates")
        return
    for i, holiday in enumerate(holidays):
        if parse_holiday(holiday) is None:
            violations.add(f"{field}[{i}]", "must be a date YYYY-MM-DD")


def parse_holiday(text: str) -> date | None:
    if not HOLIDAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def check_emission_factor(
    violations: Violations, prefix: str, factor: analytics_pb2.EmissionFactor
) -> None:
    check_commodity(violations, f"{prefix}commodity", factor.commodity)
    check_amount(violations, f"{prefix}kg_per_unit", factor.kg_per_unit)
    check_span(violations, prefix, factor)


# --- conversions -------------------------------------------------------------------------------


def versions_to_json(versions: Sequence[analytics_pb2.TariffVersion]) -> list[dict[str, Any]]:
    """What is stored: proto3 JSON per version, ordered by effective_from."""
    ordered = sorted(versions, key=lambda version: version.effective_from.ToMilliseconds())
    return [json_format.MessageToDict(version) for version in ordered]


def versions_from_json(stored: Sequence[dict[str, Any]]) -> list[analytics_pb2.TariffVersion]:
    return [json_format.ParseDict(item, analytics_pb2.TariffVersion()) for item in stored]


def pricing_tariff(stored: Sequence[dict[str, Any]], currency: str) -> tariffs.Tariff:
    """The pricing core's tariff of stored (already checked) versions."""
    return tariffs.Tariff(
        tuple(pricing_version(version, currency) for version in versions_from_json(stored))
    )


def pricing_version(version: analytics_pb2.TariffVersion, currency: str) -> tariffs.TariffVersion:
    return tariffs.TariffVersion(
        effective_from_ms=version.effective_from.ToMilliseconds(),
        effective_to_ms=(
            version.effective_to.ToMilliseconds() if version.HasField("effective_to") else None
        ),
        currency=currency,
        flat_price=version.flat_price,
        windows=tuple(
            tariffs.TouWindow(
                price=window.price,
                start_minute=window.start_minute,
                end_minute=window.end_minute,
                day_types=(
                    frozenset(DAY_TYPES[kind] for kind in window.day_types)
                    if window.day_types
                    else tariffs.ALL_DAYS
                ),
                months=frozenset(window.months) if window.months else tariffs.ALL_MONTHS,
            )
            for window in version.windows
        ),
        tiers=tuple(
            tariffs.Tier(price=tier.price, up_to=tier.up_to if tier.HasField("up_to") else None)
            for tier in version.tiers
        ),
        standing_charge_per_day=version.standing_charge_per_day,
        feed_in_price=version.feed_in_price,
        holidays=frozenset(
            day for day in (parse_holiday(text) for text in version.holidays) if day is not None
        ),
    )
