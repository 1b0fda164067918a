"""The devices service's vocabulary and input rules, independent of gRPC and the database:
what a valid site or meter is, field by field, so the API and the CSV import agree."""

from __future__ import annotations

import math
import re
import uuid
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache

from services.kernel.errors import Violations


class Commodity(StrEnum):
    ELECTRICITY = "electricity"
    GAS = "gas"
    WATER = "water"
    HEAT = "heat"


class Direction(StrEnum):
    IMPORT = "import"
    EXPORT = "export"


class RegisterType(StrEnum):
    CUMULATIVE = "cumulative"
    INTERVAL = "interval"
    INSTANTANEOUS = "instantaneous"


class MeterState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    DECOMMISSIONED = "decommissioned"


class Connectivity(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


# Quantities suit CUMULATIVE and INTERVAL registers, rates suit INSTANTANEOUS ones.
_E, _G, _W, _H = Commodity.ELECTRICITY, Commodity.GAS, Commodity.WATER, Commodity.HEAT
QUANTITY_UNITS: dict[str, frozenset[Commodity]] = {
    "Wh": frozenset({_E, _G, _H}),
    "kWh": frozenset({_E, _G, _H}),
    "MWh": frozenset({_E, _G, _H}),
    "GWh": frozenset({_E, _G, _H}),
    "MJ": frozenset({_G, _H}),
    "GJ": frozenset({_G, _H}),
    "m3": frozenset({_G, _W}),
    "ft3": frozenset({_G}),
    "L": frozenset({_W}),
    "gal": frozenset({_W}),
}
RATE_UNITS: dict[str, frozenset[Commodity]] = {
    "W": frozenset({_E, _H}),
    "kW": frozenset({_E, _H}),
    "MW": frozenset({_E, _H}),
    "m3/h": frozenset({_G, _W}),
    "L/h": frozenset({_W}),
    "L/min": frozenset({_W}),
}

DEFAULT_EXPECTED_INTERVAL_SECONDS = 15 * 60
MIN_EXPECTED_INTERVAL_SECONDS = 1
MAX_EXPECTED_INTERVAL_SECONDS = 86400
MAX_MULTIPLIER = 1_000_000.0
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_SERIAL = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
_DURATION = re.compile(r"(\d+)\s*(s|m|min|h|d)?")
_DURATION_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


# Values echoed in error messages are shortened: a CSV cell may hold 100 KB, and a message
# quoting it would swell the answer (a failed import row reports several).
ECHO_LIMIT = 40


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """The text, cut to `limit` characters (the last one an ellipsis) when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted(text: str, limit: int = ECHO_LIMIT) -> str:
    """A value as quoted in an error message ('…'), shortened."""
    return repr(shorten(text, limit))


@cache
def time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_id(value: str) -> str | None:
    """A canonical UUID, or None for anything that is not one (which is then not found)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def parse_duration(text: str) -> int | None:
    """Seconds from "900", "900s", "15m", "1h", "1d"; None when it is none of those."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


@dataclass(frozen=True)
class SiteInput:
    """A site's writable fields. On update, only the fields named in the mask are used."""

    name: str = ""
    time_zone: str = ""
    address: str = ""
    latitude: float | None = None
    longitude: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterInput:
    """A meter's writable fields; None means "not given" (the default, or unchanged)."""

    site_id: str | None = None
    serial_number: str | None = None
    name: str | None = None
    commodity: Commodity | None = None
    direction: Direction | None = None
    unit: str | None = None
    register_type: RegisterType | None = None
    multiplier: float | None = None
    rollover_value: float | None = None
    expected_interval_seconds: int | None = None
    labels: dict[str, str] | None = None
    state: MeterState | None = None

    def with_defaults(self) -> MeterInput:
        return replace(
            self,
            name=self.name or "",
            direction=self.direction or Direction.IMPORT,
            multiplier=1.0 if self.multiplier is None else self.multiplier,
            expected_interval_seconds=(
                DEFAULT_EXPECTED_INTERVAL_SECONDS
                if self.expected_interval_seconds is None
                else self.expected_interval_seconds
            ),
            labels=self.labels or {},
            state=self.state or MeterState.ACTIVE,
        )


IMMUTABLE_METER_FIELDS = frozenset(
    {"serial_number", "commodity", "direction", "unit", "register_type"}
)


def check_text(
    violations: Violations, name: str, value: str, maximum: int, *, required: bool
) -> None:
    if required and not value.strip():
        violations.add(name, "is required")
    elif len(value) > maximum:
        violations.add(name, f"must be at most {maximum} characters")


def check_labels(violations: Violations, name: str, labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        violations.add(name, f"must have at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            violations.add(
                f"{name}[{shorten(key, 64)}]",
                "key must be 1 to 63 characters of a-z, 0-9, '_', '.', '-' starting with a letter",
            )
        elif len(value) > 63:
            violations.add(f"{name}[{key}]", "value must be at most 63 characters")


def check_site(violations: Violations, prefix: str, site: SiteInput) -> None:
    """Every rule for a complete site; field names are prefixed (e.g. "site.")."""
    check_text(violations, f"{prefix}name", site.name, 200, required=True)
    if not site.time_zone.strip():
        violations.add(f"{prefix}time_zone", "is required (an IANA name such as Europe/Berlin)")
    elif site.time_zone not in time_zones():
        violations.add(
            f"{prefix}time_zone",
            f"{quoted(site.time_zone)} is not an IANA time zone (such as Europe/Berlin)",
        )
    check_text(violations, f"{prefix}address", site.address, 500, required=False)
    if (site.latitude is None) != (site.longitude is None):
        violations.add(
            f"{prefix}latitude" if site.latitude is None else f"{prefix}longitude",
            "latitude and longitude are set together",
        )
    if site.latitude is not None and not (
        math.isfinite(site.latitude) and -90 <= site.latitude <= 90
    ):
        violations.add(f"{prefix}latitude", "must be between -90 and 90")
    if site.longitude is not None and not (
        math.isfinite(site.longitude) and -180 <= site.longitude <= 180
    ):
        violations.add(f"{prefix}longitude", "must be between -180 and 180")
    check_labels(violations, f"{prefix}labels", site.labels)


def units_for(commodity: Commodity, register_type: RegisterType) -> list[str]:
    table = RATE_UNITS if register_type is RegisterType.INSTANTANEOUS else QUANTITY_UNITS
    return [unit for unit, commodities in table.items() if commodity in commodities]


def check_meter(
    violations: Violations,
    prefix: str,
    meter: MeterInput,
    names: dict[str, str] | None = None,
) -> None:
    """Every rule for a complete meter (after defaults). `names` renames fields in the
    violations (expected_interval_seconds is expected_interval in the API)."""

    def name(field_name: str) -> str:
        return prefix + (names or {}).get(field_name, field_name)

    if not meter.site_id:
        violations.add(name("site_id"), "is required")
    serial = meter.serial_number or ""
    if not serial:
        violations.add(name("serial_number"), "is required")
    elif not _SERIAL.fullmatch(serial):
        violations.add(
            name("serial_number"), "must be 1 to 64 printable ASCII characters without spaces"
        )
    check_text(violations, name("name"), meter.name or "", 200, required=False)
    if meter.commodity is None:
        violations.add(name("commodity"), "is required")
    if meter.register_type is None:
        violations.add(name("register_type"), "is required")
    unit = meter.unit or ""
    if not unit:
        violations.add(name("unit"), "is required")
    elif unit not in QUANTITY_UNITS and unit not in RATE_UNITS:
        known = ", ".join([*QUANTITY_UNITS, *RATE_UNITS])
        violations.add(name("unit"), f"{quoted(unit)} is not a known unit ({known})")
    elif meter.commodity is not None and meter.register_type is not None:
        allowed = units_for(meter.commodity, meter.register_type)
        if unit not in allowed:
            violations.add(
                name("unit"),
                f"{quoted(unit)} does not suit a {meter.register_type.value} "
                f"{meter.commodity.value} meter (use one of {', '.join(allowed)})",
            )
    multiplier = meter.multiplier
    if multiplier is not None and not (
        math.isfinite(multiplier) and 0 < multiplier <= MAX_MULTIPLIER
    ):
        violations.add(name("multiplier"), f"must be greater than 0 and at most {MAX_MULTIPLIER:g}")
    rollover = meter.rollover_value
    if rollover is not None:
        if not (math.isfinite(rollover) and rollover > 0):
            violations.add(name("rollover_value"), "must be greater than 0")
        elif meter.register_type is not None and meter.register_type is not RegisterType.CUMULATIVE:
            violations.add(name("rollover_value"), "applies only to cumulative registers")
    interval = meter.expected_interval_seconds
    if interval is not None and not (
        MIN_EXPECTED_INTERVAL_SECONDS <= interval <= MAX_EXPECTED_INTERVAL_SECONDS
    ):
        violations.add(
            name("expected_interval_seconds"),
            f"must be whole seconds from {MIN_EXPECTED_INTERVAL_SECONDS} s to 1 day",
        )
    if meter.labels is not None:
        check_labels(violations, name("labels"), meter.labels)
    if meter.state is MeterState.DECOMMISSIONED:
        violations.add(name("state"), "is reached only by deleting the meter")


def connectivity_of(
    last_seen_time: datetime | None, expected_interval_seconds: int, now: datetime
) -> Connectivity:
    """ONLINE while the newest reading is at most two expected intervals old."""
    if last_seen_time is None:
        return Connectivity.OFFLINE
    if now - last_seen_time > timedelta(seconds=2 * expected_interval_seconds):
        return Connectivity.OFFLINE
    return Connectivity.ONLINE
