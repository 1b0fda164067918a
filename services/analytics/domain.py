"""The analytics domain: keeps rollups up to date from committed readings and answers
consumption queries from them."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import json_format
from nats.aio.msg import Msg

from energymesh.devices.v1 import devices_pb2
from energymesh.telemetry.v1 import events_pb2 as telemetry_events_pb2
from services.analytics import pricing, repository
from services.analytics.events import (
    METER_CREATED,
    METER_DECOMMISSIONED,
    METER_UPDATED,
    SITE_CREATED,
    SITE_UPDATED,
)
from services.analytics.models import FLAG_RESET, FLAG_ROLLOVER, MeterInfo, Rollup
from services.analytics.rollups import (
    QUARTER_HOUR_MS,
    Bucket,
    Granularity,
    MeterSpec,
    RegisterType,
    UnknownUnitError,
    affected_range,
    aggregate,
    aligned_range,
    normalise_unit,
    quarter_hours,
    window,
)
from services.kernel.context import Caller
from services.kernel.database import Database
from services.kernel.errors import FailedPrecondition, Unavailable, Violations
from services.kernel.messaging import PoisonMessage
from services.kernel.registry import DeviceRegistry

log = logging.getLogger(__name__)

REGISTER_TYPES = {
    devices_pb2.REGISTER_TYPE_CUMULATIVE: RegisterType.CUMULATIVE,
    devices_pb2.REGISTER_TYPE_INTERVAL: RegisterType.INTERVAL,
    devices_pb2.REGISTER_TYPE_INSTANTANEOUS: RegisterType.INSTANTANEOUS,
}
# Granularities stored; WEEK and MONTH are summed from DAY at query time.
STORED = (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY)
# Most buckets one query may return.
MAX_POINTS = 50_000
_MIN_BUCKET_MS = {
    Granularity.QUARTER_HOUR: QUARTER_HOUR_MS,
    Granularity.HOUR: 3_600_000,
    Granularity.DAY: 23 * 3_600_000,
    Granularity.WEEK: 7 * 23 * 3_600_000,
    Granularity.MONTH: 28 * 23 * 3_600_000,
}


class NotYetKnown(Exception):
    """The meter or its site has not arrived from the registry's events yet: retried later."""


def to_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def to_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def spec_of(meter: MeterInfo, time_zone: str) -> MeterSpec:
    register = REGISTER_TYPES.get(meter.register_type)  # type: ignore[call-overload]
    if register is None:
        raise PoisonMessage(f"meter {meter.id} has no known register type")
    return MeterSpec(
        register_type=register,
        unit=meter.unit,
        time_zone=time_zone,
        multiplier=meter.multiplier,
        rollover_value=meter.rollover_value,
        expected_interval_ms=meter.expected_interval_ms or QUARTER_HOUR_MS,
    )


def rollup_row(
    meter: MeterInfo,
    granularity: Granularity,
    bucket: Bucket,
    unit: str,
    currency: str | None = None,
) -> dict[str, Any]:
    flags = (FLAG_RESET if bucket.resets else 0) | (FLAG_ROLLOVER if bucket.rollovers else 0)
    return {
        "meter_id": meter.id,
        "organization_id": meter.organization_id,
        "granularity": granularity.value,
        "bucket_start": to_datetime(bucket.start_ms),
        "bucket_end": to_datetime(bucket.end_ms),
        "value": bucket.value,
        "unit": unit,
        "completeness": bucket.completeness,
        "covered_ms": bucket.covered_ms,
        "reading_count": bucket.readings,
        "reset_count": bucket.resets,
        "rollover_count": bucket.rollovers,
        "peak_demand": bucket.peak_demand,
        "peak_time": to_datetime(bucket.peak_time_ms),
        "flags": flags,
        "cost": bucket.cost,
        "co2_kg": bucket.co2_kg,
        "currency": currency if bucket.cost is not None else None,
    }


def bucket_of(row: Rollup) -> Bucket:
    return Bucket(
        start_ms=to_ms(row.bucket_start),
        end_ms=to_ms(row.bucket_end),
        value=row.value,
        covered_ms=row.covered_ms,
        readings=row.reading_count,
        resets=row.reset_count,
        rollovers=row.rollover_count,
        peak_demand=row.peak_demand,
        peak_time_ms=to_ms(row.peak_time),
        cost=row.cost,
        co2_kg=row.co2_kg,
    )


@dataclass(frozen=True)
class Series:
    meter: devices_pb2.Meter
    unit: str
    buckets: Sequence[Bucket]
    # ISO 4217 code of the buckets' cost; "" when unpriced.
    currency: str = ""


class Analytics:
    def __init__(self, database: Database, devices: DeviceRegistry) -> None:
        self.database = database
        self.devices = devices

    # --- rollup maintenance (the telemetry.readings.committed consumer) -----------------------

    async def on_readings_committed(self, message: Msg) -> None:
        try:
            committed = json_format.Parse(
                message.data,
                telemetry_events_pb2.ReadingsCommitted(),
                ignore_unknown_fields=True,
            )
        except (json_format.ParseError, UnicodeDecodeError) as error:
            raise PoisonMessage(f"not a ReadingsCommitted: {error}") from error
        if not is_uuid(committed.meter_id) or not committed.HasField("first_time"):
            raise PoisonMessage("ReadingsCommitted without a meter id or first time")
        first = committed.first_time.ToDatetime(tzinfo=UTC)
        last = (
            committed.last_time.ToDatetime(tzinfo=UTC) if committed.HasField("last_time") else first
        )
        await self.recompute(committed.meter_id, to_ms(first), to_ms(max(first, last)))

    async def recompute(self, meter_id: str, first_ms: int, last_ms: int) -> int:
        """Recomputes every stored bucket that readings timed first_ms..last_ms affect: the
        quarter hours of rollups.affected_range, widened to whole local days so that the
        hours and days holding them are rebuilt from complete quarter hours. Idempotent: the
        same readings give the same rows. Returns how many rows were written."""
        async with self.database.transaction() as session:
            meter = await repository.meter_info(session, meter_id)
            if meter is None:
                raise NotYetKnown(f"meter {meter_id} is not known yet")
            site = await repository.site_info(session, meter.site_id)
            if site is None:
                raise NotYetKnown(f"site {meter.site_id} is not known yet")
            spec = spec_of(meter, site.time_zone)
            try:
                unit = normalise_unit(spec.unit).canonical
            except UnknownUnitError as error:
                raise PoisonMessage(str(error)) from error
            await repository.lock_meter(session, meter_id)
            previous = await repository.reading_before(session, meter_id, to_datetime(first_ms))
            following = await repository.reading_after(session, meter_id, to_datetime(last_ms))
            lo, hi = affected_range(spec, first_ms, last_ms, previous, following)
            day_lo, day_hi = aligned_range(lo, hi, Granularity.DAY, spec.zone)
            # INTERVAL readings up to one interval after the range still report on it.
            fetched = await repository.readings_window(
                session,
                meter_id,
                to_datetime(day_lo),
                to_datetime(day_hi + spec.expected_interval_ms),
            )
            quarters = quarter_hours(window(fetched, spec, day_lo, day_hi), spec, day_lo, day_hi)
            # Cost and CO2 per quarter hour; hours and days sum them (aggregate).
            quarters, prices = await pricing.price_recomputed(
                session, meter, site.time_zone, quarters
            )
            currency = prices.currency
            rows = [
                rollup_row(meter, Granularity.QUARTER_HOUR, q, unit, currency) for q in quarters
            ]
            for granularity in (Granularity.HOUR, Granularity.DAY):
                rows.extend(
                    rollup_row(meter, granularity, bucket, unit, currency)
                    for bucket in aggregate(quarters, granularity, spec.zone)
                )
            await repository.upsert_rollups(session, rows)
            await pricing.reprice_rest_of_month(session, meter, prices, day_hi)
        return len(rows)

    # --- the registry's events -------------------------------------------------------------

    async def on_device_event(self, message: Msg) -> None:
        subject = message.subject
        if subject not in (
            METER_CREATED,
            METER_UPDATED,
            METER_DECOMMISSIONED,
            SITE_CREATED,
            SITE_UPDATED,
        ):
            return
        try:
            payload = json.loads(message.data)
            if subject.startswith("devices.site."):
                site = json_format.ParseDict(
                    payload.get("site") or {}, devices_pb2.Site(), ignore_unknown_fields=True
                )
            else:
                meter = json_format.ParseDict(
                    payload.get("meter") or {}, devices_pb2.Meter(), ignore_unknown_fields=True
                )
        except (json.JSONDecodeError, UnicodeDecodeError, json_format.ParseError) as error:
            raise PoisonMessage(f"malformed {subject}: {error}") from error
        async with self.database.transaction() as session:
            if subject.startswith("devices.site."):
                if not is_uuid(site.site_id) or not site.time_zone:
                    return
                await repository.upsert_site_info(
                    session,
                    {
                        "id": site.site_id,
                        "organization_id": site.organization_id,
                        "time_zone": site.time_zone,
                        "update_time": _update_time(site),
                    },
                )
                return
            if not is_uuid(meter.meter_id):
                return
            await repository.upsert_meter_info(
                session,
                {
                    "id": meter.meter_id,
                    "organization_id": meter.organization_id,
                    "site_id": meter.site_id,
                    "register_type": int(meter.register_type),
                    "commodity": int(meter.commodity),
                    "direction": int(meter.direction),
                    "unit": meter.unit,
                    "multiplier": meter.multiplier if meter.HasField("multiplier") else 1.0,
                    "rollover_value": (
                        meter.rollover_value if meter.HasField("rollover_value") else None
                    ),
                    "expected_interval_ms": meter.expected_interval.ToMilliseconds()
                    or QUARTER_HOUR_MS,
                    "update_time": _update_time(meter),
                },
            )

    # --- queries -----------------------------------------------------------------------------

    async def meter_consumption(
        self,
        caller: Caller,
        authorization: str,
        meter_id: str,
        start: datetime | None,
        end: datetime | None,
        granularity: Granularity | None,
        time_zone: str,
    ) -> Series:
        violations = Violations()
        violations.check(is_uuid(meter_id), "meter_id", "must be a meter id (UUID)")
        violations.check(start is not None, "start_time", "is required")
        violations.check(end is not None, "end_time", "is required")
        violations.check(granularity is not None, "granularity", "is required")
        if start is not None and end is not None:
            violations.check(start < end, "end_time", "must be after start_time")
        override: ZoneInfo | None = None
        if time_zone:
            try:
                override = ZoneInfo(time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                violations.add("time_zone", "must be an IANA time zone")
        violations.raise_if_any()
        assert start is not None
        assert end is not None
        assert granularity is not None
        start_ms, end_ms = to_ms(start), to_ms(end)
        if (end_ms - start_ms) // _MIN_BUCKET_MS[granularity] > MAX_POINTS:
            violations.add("end_time", f"the range holds more than {MAX_POINTS} buckets")
            violations.raise_if_any()

        meter = await self.devices.visible_meter(caller, authorization, meter_id)
        try:
            unit = normalise_unit(meter.unit).canonical
        except UnknownUnitError as error:
            raise FailedPrecondition(str(error)) from error
        async with self.database.transaction() as session:
            site = await repository.site_info(session, meter.site_id)
            if site is None:
                raise Unavailable("the meter's site is not known to analytics yet; retry")
            site_zone = ZoneInfo(site.time_zone)
            zone = override or site_zone
            lo, hi = aligned_range(start_ms, end_ms, granularity, zone)
            if override is not None and override.key != site_zone.key:
                # Buckets of another zone: sum the quarter hours (whole quarter-hour offsets).
                stored, derive = Granularity.QUARTER_HOUR, True
            elif granularity in STORED:
                stored, derive = granularity, False
            else:
                stored, derive = Granularity.DAY, True
            rows = await repository.rollups(
                session, meter_id, stored.value, to_datetime(lo), to_datetime(hi)
            )
        buckets = [bucket_of(row) for row in rows]
        if derive:
            buckets = aggregate(buckets, granularity, zone)
        currency = next((row.currency for row in rows if row.currency), "")
        return Series(meter=meter, unit=unit, buckets=buckets, currency=currency)


def _update_time(resource: devices_pb2.Meter | devices_pb2.Site) -> datetime:
    if resource.HasField("update_time"):
        moment: datetime = resource.update_time.ToDatetime(tzinfo=UTC)
        return moment
    return datetime.now(UTC)
