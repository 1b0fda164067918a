"""Rollup maintenance: the consumers that keep the rollups equal to what the readings say.

- telemetry.readings.committed: recompute exactly the buckets the new readings affect
  (`recompute`), keep the meter's months and its site's sums in step
  (services/analytics/aggregates.py), reprice what tiers make depend on them, and check the
  recomputed hours for anomalies.
- devices.>: keep the local copy of meters and sites. A change that alters what a meter's
  buckets are or hold (its site, the site's time zone, multiplier, rollover value, cadence)
  rebuilds them from the readings (`rebuild`, one local month per transaction, resumable); a
  purged meter's rollups are removed.

Every step is idempotent (the same readings give the same rows), so a redelivered event
changes nothing, and a process killed mid-event leaves a transaction that never happened.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.analytics.v1 import events_pb2
from energymesh.devices.v1 import devices_pb2
from energymesh.devices.v1 import events_pb2 as devices_events_pb2
from energymesh.telemetry.v1 import events_pb2 as telemetry_events_pb2
from services.analytics import aggregates, pricing, repository
from services.analytics.anomalies import detect
from services.analytics.events import (
    ANOMALY_DETECTED,
    METER_CREATED,
    METER_DECOMMISSIONED,
    METER_PURGED,
    METER_UPDATED,
    SITE_CREATED,
    SITE_UPDATED,
)
from services.analytics.models import AnomalyRow, MeterInfo, SiteInfo
from services.analytics.rollups import (
    MS_PER_HOUR,
    QUARTER_HOUR_MS,
    Granularity,
    MeterSpec,
    RegisterType,
    UnknownUnitError,
    affected_range,
    aggregate,
    aligned_range,
    bucket_end,
    bucket_start,
    normalise_unit,
    quarter_hours,
    window,
)
from services.analytics.rows import anomaly_to_proto, rollup_row, row_values, to_datetime, to_ms
from services.kernel.database import Database
from services.kernel.errors import is_uuid
from services.kernel.messaging import PoisonMessage
from services.kernel.outbox import Outbox

log = logging.getLogger(__name__)

REGISTER_TYPES = {
    devices_pb2.REGISTER_TYPE_CUMULATIVE: RegisterType.CUMULATIVE,
    devices_pb2.REGISTER_TYPE_INTERVAL: RegisterType.INTERVAL,
    devices_pb2.REGISTER_TYPE_INSTANTANEOUS: RegisterType.INSTANTANEOUS,
}
# Meter fields whose change alters the meter's buckets or their amounts: a rebuild.
REBUILD_FIELDS = ("site_id", "multiplier", "rollover_value", "expected_interval_ms")
# Anomaly detection: hours at least this complete are judged and count as history.
COMPLETE_HOUR = 0.9
HISTORY_WEEKS = 4
_WEEK_MS = 7 * 24 * MS_PER_HOUR
# A rebuild starts from the meter's first reading.
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)

Progress = Callable[[], Awaitable[None]]
Resource = TypeVar("Resource", devices_pb2.Meter, devices_pb2.Site)


class NotYetKnown(Exception):
    """The meter or its site has not arrived from the registry's events yet: retried later."""


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


@dataclass
class RollupStats:
    """What this process applied (GetRollupStatus)."""

    applied_events: int = 0
    applied_readings: int = 0
    last_lag_seconds: float = 0.0
    last_apply_time: datetime | None = None


class RollupMaintainer:
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self.database = database
        self.outbox = outbox
        self.stats = RollupStats()

    # --- telemetry.readings.committed ---------------------------------------------------------

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
        first = to_ms(committed.first_time.ToDatetime(tzinfo=UTC))
        last = (
            to_ms(committed.last_time.ToDatetime(tzinfo=UTC))
            if committed.HasField("last_time")
            else first
        )
        await self.recompute(committed.meter_id, first, max(first, last))
        self.stats.applied_events += 1
        self.stats.applied_readings += committed.count
        self.stats.last_apply_time = datetime.now(UTC)
        published = message.metadata.timestamp
        if published is not None:
            lag = self.stats.last_apply_time - published
            self.stats.last_lag_seconds = max(0.0, lag.total_seconds())

    async def recompute(self, meter_id: str, first_ms: int, last_ms: int) -> int:
        """Recomputes every stored bucket that readings timed first_ms..last_ms affect, in one
        transaction under the meter's lock. Returns how many meter rows were written."""
        async with self.database.transaction() as session:
            await repository.lock_meter(session, meter_id)
            meter = await repository.meter_info(session, meter_id)
            if meter is None:
                raise NotYetKnown(f"meter {meter_id} is not known yet")
            site = await repository.site_info(session, meter.site_id)
            if site is None:
                raise NotYetKnown(f"site {meter.site_id} is not known yet")
            return await self._recompute(session, meter, site, first_ms, last_ms)

    async def _recompute(
        self, session: AsyncSession, meter: MeterInfo, site: SiteInfo, first_ms: int, last_ms: int
    ) -> int:
        """The quarter hours of rollups.affected_range, widened to whole local days so that
        the hours and days holding them are rebuilt from complete quarter hours; then the
        months holding those days, the site sums and the anomalies of the changed hours.
        Idempotent. The caller holds the meter's lock."""
        spec = spec_of(meter, site.time_zone)
        try:
            unit = normalise_unit(spec.unit).canonical
        except UnknownUnitError as error:
            raise PoisonMessage(str(error)) from error
        previous = await repository.reading_before(session, meter.id, to_datetime(first_ms))
        following = await repository.reading_after(session, meter.id, to_datetime(last_ms))
        lo, hi = affected_range(spec, first_ms, last_ms, previous, following)
        day_lo, day_hi = aligned_range(lo, hi, Granularity.DAY, spec.zone)
        # INTERVAL readings up to one interval after the range still report on it.
        fetched = await repository.readings_window(
            session,
            meter.id,
            to_datetime(day_lo),
            to_datetime(day_hi + spec.expected_interval_ms),
        )
        quarters = quarter_hours(window(fetched, spec, day_lo, day_hi), spec, day_lo, day_hi)
        # Cost and CO2 per quarter hour; hours and days sum them (aggregate).
        quarters, prices = await pricing.price_recomputed(session, meter, site.time_zone, quarters)
        currency = prices.currency
        rows = [rollup_row(meter, Granularity.QUARTER_HOUR, q, unit, currency) for q in quarters]
        for granularity in (Granularity.HOUR, Granularity.DAY):
            rows.extend(
                rollup_row(meter, granularity, bucket, unit, currency)
                for bucket in aggregate(quarters, granularity, spec.zone)
            )
        stored = await repository.rollups_between(
            session,
            meter.id,
            [g.value for g in (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY)],
            to_datetime(day_lo),
            to_datetime(day_hi),
        )
        old_rows = [row_values(row) for row in stored]
        await repository.upsert_rollups(session, rows)
        # Tiers: the rest of the month is repriced (it keeps its own sums in step).
        await pricing.reprice_rest_of_month(session, meter, prices, day_hi)
        old_months, new_months = await aggregates.refresh_months(
            session, meter, site.time_zone, day_lo, day_hi
        )
        await aggregates.apply_changes(session, meter, old_rows + old_months, rows + new_months)
        await self._check_anomalies(session, meter, site, unit, lo, hi)
        return len(rows) + len(new_months)

    # --- anomalies ---------------------------------------------------------------------------

    async def _check_anomalies(
        self, session: AsyncSession, meter: MeterInfo, site: SiteInfo, unit: str, lo: int, hi: int
    ) -> None:
        """Judges the recomputed hours [lo, hi) against their hour-of-week history: stores the
        anomalies found (publishing each new one once) and removes those no longer found."""
        zone = spec_of(meter, site.time_zone).zone
        hour_lo, hour_hi = aligned_range(lo, hi, Granularity.HOUR, zone)
        history = await repository.rollups(
            session,
            meter.id,
            Granularity.HOUR.value,
            to_datetime(hour_lo - (HISTORY_WEEKS + 1) * _WEEK_MS),
            to_datetime(hour_hi),
        )
        if not history:
            return
        starts = [to_ms(row.bucket_start) for row in history]
        values = [row.value if row.completeness >= COMPLETE_HOUR else math.nan for row in history]
        found = {
            anomaly.start_ms: anomaly
            for anomaly in detect(starts, values, site.time_zone, weeks=HISTORY_WEEKS)
            if hour_lo <= anomaly.start_ms < hour_hi
        }
        stored = {
            to_ms(row.start_time): row
            for row in await repository.anomalies_between(
                session, meter.id, to_datetime(hour_lo), to_datetime(hour_hi)
            )
        }
        await repository.delete_anomalies(
            session, [row.id for start, row in stored.items() if start not in found]
        )
        now = datetime.now(UTC)
        for start, anomaly in found.items():
            row = stored.get(start)
            if row is not None:  # still anomalous: refresh its numbers, announced already
                row.value, row.expected, row.score = anomaly.value, anomaly.expected, anomaly.score
                continue
            row = AnomalyRow(
                id=str(uuid.uuid4()),
                organization_id=meter.organization_id,
                meter_id=meter.id,
                site_id=meter.site_id,
                start_time=to_datetime(start),
                end_time=to_datetime(bucket_end(start, Granularity.HOUR, zone)),
                value=anomaly.value,
                expected=anomaly.expected,
                score=anomaly.score,
                unit=unit,
                detect_time=now,
            )
            session.add(row)
            await self.outbox.add(
                session,
                ANOMALY_DETECTED,
                events_pb2.AnomalyDetected(
                    organization_id=meter.organization_id, anomaly=anomaly_to_proto(row)
                ),
                message_id=row.id,
            )

    # --- the registry's events ---------------------------------------------------------------

    async def on_device_event(self, message: Msg) -> None:
        subject = message.subject
        handlers = {
            SITE_CREATED: self._on_site,
            SITE_UPDATED: self._on_site,
            METER_CREATED: self._on_meter,
            METER_UPDATED: self._on_meter,
            METER_DECOMMISSIONED: self._on_meter,
            METER_PURGED: self._on_meter_purged,
        }
        handler = handlers.get(subject)
        if handler is None:
            return
        try:
            payload = json.loads(message.data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PoisonMessage(f"malformed {subject}: {error}") from error
        if not isinstance(payload, dict):
            raise PoisonMessage(f"malformed {subject}: not an object")
        rebuilds = await handler(payload)
        for meter_id in rebuilds:
            await self.rebuild(meter_id, message.in_progress)

    async def _on_site(self, payload: dict[str, Any]) -> list[str]:
        site = _parse(payload.get("site"), devices_pb2.Site())
        if not is_uuid(site.site_id) or not site.time_zone:
            return []
        async with self.database.transaction() as session:
            await repository.lock_site(session, site.site_id)
            known = await repository.site_info(session, site.site_id)
            update_time = _update_time(site)
            if known is not None and known.update_time > update_time:
                return []  # an older version, delivered late
            rebuilds: list[str] = []
            if known is not None and known.time_zone != site.time_zone:
                # Every bucket of the site moves: start its meters and sums afresh.
                meters = await repository.meters_of_site(session, site.site_id)
                for meter in meters:
                    await repository.lock_meter(session, meter.id)
                    meter.rebuilt_until = _BEGINNING
                await repository.delete_rollups(session, [meter.id for meter in meters])
                await repository.delete_site_rollups(session, site.site_id)
                rebuilds = [meter.id for meter in meters]
            await repository.upsert_site_info(
                session,
                {
                    "id": site.site_id,
                    "organization_id": site.organization_id,
                    "time_zone": site.time_zone,
                    "update_time": update_time,
                },
            )
        return rebuilds

    async def _on_meter(self, payload: dict[str, Any]) -> list[str]:
        meter = _parse(payload.get("meter"), devices_pb2.Meter())
        if not is_uuid(meter.meter_id):
            return []
        values: dict[str, Any] = {
            "id": meter.meter_id,
            "organization_id": meter.organization_id,
            "site_id": meter.site_id,
            "register_type": int(meter.register_type),
            "commodity": int(meter.commodity),
            "direction": int(meter.direction),
            "unit": meter.unit,
            "multiplier": meter.multiplier if meter.HasField("multiplier") else 1.0,
            "rollover_value": meter.rollover_value if meter.HasField("rollover_value") else None,
            "expected_interval_ms": meter.expected_interval.ToMilliseconds() or QUARTER_HOUR_MS,
            "update_time": _update_time(meter),
        }
        async with self.database.transaction() as session:
            await repository.lock_meter(session, meter.meter_id)
            known = await repository.lock_meter_info(session, meter.meter_id)
            if known is None:
                session.add(MeterInfo(**values, rebuilt_until=None))
                return []
            if known.update_time > values["update_time"]:
                return []  # an older version, delivered late
            changed = any(getattr(known, name) != values[name] for name in REBUILD_FIELDS)
            if changed:
                await self._drop_rollups(session, known)
                values["rebuilt_until"] = _BEGINNING
            for name, value in values.items():
                setattr(known, name, value)
        return [meter.meter_id] if changed else []

    async def _on_meter_purged(self, payload: dict[str, Any]) -> list[str]:
        purged = json_format.ParseDict(
            payload, devices_events_pb2.MeterPurged(), ignore_unknown_fields=True
        )
        if not is_uuid(purged.meter_id):
            return []
        async with self.database.transaction() as session:
            await repository.lock_meter(session, purged.meter_id)
            known = await repository.lock_meter_info(session, purged.meter_id)
            if known is not None:
                await self._drop_rollups(session, known)
            await repository.delete_meter(session, purged.meter_id)
        return []

    @staticmethod
    async def _drop_rollups(session: AsyncSession, meter: MeterInfo) -> None:
        """Removes the meter's rollups and takes them out of its site's sums."""
        stored = [row_values(row) for row in await repository.all_rollups(session, meter.id)]
        if stored:
            await aggregates.apply_changes(session, meter, stored, [])
            await repository.delete_rollups(session, [meter.id])

    # --- rebuilds ------------------------------------------------------------------------------

    async def rebuild(self, meter_id: str, progress: Progress | None = None) -> None:
        """Recomputes a meter's rollups from its readings, one local month per transaction,
        from where an earlier (interrupted) rebuild got to (MeterInfo.rebuilt_until)."""
        while True:
            async with self.database.transaction() as session:
                await repository.lock_meter(session, meter_id)
                meter = await repository.lock_meter_info(session, meter_id)
                if meter is None or meter.rebuilt_until is None:
                    return
                site = await repository.site_info(session, meter.site_id)
                if site is None:
                    raise NotYetKnown(f"site {meter.site_id} is not known yet")
                span = await repository.reading_span(session, meter_id, meter.rebuilt_until)
                if span is None:
                    meter.rebuilt_until = None
                    log.info("rebuilt the rollups of meter %s", meter_id)
                    return
                zone = spec_of(meter, site.time_zone).zone
                first, last = span
                month = bucket_start(first, Granularity.MONTH, zone)
                month_end = bucket_end(month, Granularity.MONTH, zone)
                await self._recompute(session, meter, site, first, min(last, month_end - 1))
                meter.rebuilt_until = to_datetime(month_end)
            if progress is not None:
                await progress()

    async def resume_rebuilds(self) -> None:
        """Finishes rebuilds an earlier process was interrupted in (at startup), retrying
        while the database is unavailable."""
        for attempt in itertools.count():
            try:
                async with self.database.transaction() as session:
                    meter_ids = await repository.rebuilding_meters(session)
                for meter_id in meter_ids:
                    try:
                        await self.rebuild(meter_id)
                    except NotYetKnown:
                        log.info("rebuild of meter %s waits for its site", meter_id)
                return
            except Exception:
                log.exception("resuming rollup rebuilds failed; retrying")
                await asyncio.sleep(min(60, 2**attempt))

    async def rebuilding(self) -> int:
        async with self.database.transaction() as session:
            return len(await repository.rebuilding_meters(session))


def _parse(data: Any, message: Resource) -> Resource:
    try:
        return json_format.ParseDict(data or {}, message, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise PoisonMessage(f"malformed registry event: {error}") from error


def _update_time(resource: devices_pb2.Meter | devices_pb2.Site) -> datetime:
    if resource.HasField("update_time"):
        moment: datetime = resource.update_time.ToDatetime(tzinfo=UTC)
        return moment
    return datetime.now(UTC)
