"""Rollup maintenance: the consumers that keep the rollups equal to what the readings say.

- telemetry.readings.committed, a batch of events at a time: recompute exactly the buckets
  the new readings affect, with their hours, days, months and site sums
  (services/analytics/recompute.py), and check the recomputed hours for anomalies.
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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.analytics.v1 import events_pb2
from energymesh.devices.v1 import devices_pb2
from energymesh.devices.v1 import events_pb2 as devices_events_pb2
from energymesh.telemetry.v1 import events_pb2 as telemetry_events_pb2
from services.analytics import aggregates, repository
from services.analytics.anomalies import Anomaly, detect
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
from services.analytics.recompute import Change, Recomputed, merged, recompute
from services.analytics.rollups import (
    COMPLETE_HOUR,
    MS_PER_HOUR,
    QUARTER_HOUR_MS,
    Granularity,
    MeterSpec,
    RegisterType,
    UnknownUnitError,
    aligned_range,
    bucket_end,
    bucket_start,
    normalise_unit,
)
from services.analytics.rows import anomaly_to_proto, row_values, to_datetime, to_ms
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
        await self.on_readings_batch([message])

    async def on_readings_batch(self, messages: Sequence[Msg]) -> None:
        """Applies a batch of committed-readings events in one transaction. Raises on any
        malformed event (the consumer then handles the messages one by one)."""
        changes, readings = [], 0
        for message in messages:
            committed = _parse_committed(message.data)
            first = to_ms(committed.first_time.ToDatetime(tzinfo=UTC))
            last = first
            if committed.HasField("last_time"):
                last = max(first, to_ms(committed.last_time.ToDatetime(tzinfo=UTC)))
            changes.append(Change(committed.meter_id, first, last))
            readings += committed.count
        await self.recompute(changes)
        stats = self.stats
        stats.applied_events += len(messages)
        stats.applied_readings += readings
        stats.last_apply_time = datetime.now(UTC)
        published = messages[-1].metadata.timestamp
        if published is not None:
            stats.last_lag_seconds = max(0.0, (stats.last_apply_time - published).total_seconds())

    async def recompute_meter(self, meter_id: str, first_ms: int, last_ms: int) -> None:
        await self.recompute([Change(meter_id, first_ms, last_ms)])

    async def recompute(self, changes: Sequence[Change]) -> list[Recomputed]:
        """Recomputes every stored bucket the changes affect, in one transaction under the
        meters' locks; then checks the recomputed hours for anomalies."""
        changes = merged(changes)
        async with self.database.transaction() as session:
            await repository.lock_meters(session, [change.meter_id for change in changes])
            meters, sites, specs = await self._known(session, [c.meter_id for c in changes])
            done = await recompute(session, changes, meters, sites, specs)
            await self._check_anomalies(session, done)
        return done

    async def _known(
        self, session: AsyncSession, meter_ids: Sequence[str]
    ) -> tuple[dict[str, MeterInfo], dict[str, SiteInfo], dict[str, tuple[MeterSpec, str]]]:
        """The meters, their sites and specs; NotYetKnown while one has not arrived from the
        registry's events."""
        meters = {meter.id: meter for meter in await repository.meter_infos(session, meter_ids)}
        sites = {
            site.id: site
            for site in await repository.sites(session, list({m.site_id for m in meters.values()}))
        }
        specs = {}
        for meter_id in meter_ids:
            meter = meters.get(meter_id)
            if meter is None:
                raise NotYetKnown(f"meter {meter_id} is not known yet")
            site = sites.get(meter.site_id)
            if site is None:
                raise NotYetKnown(f"site {meter.site_id} is not known yet")
            spec = spec_of(meter, site.time_zone)
            try:
                specs[meter_id] = (spec, normalise_unit(spec.unit).canonical)
            except UnknownUnitError as error:
                raise PoisonMessage(str(error)) from error
        return meters, sites, specs

    # --- anomalies ---------------------------------------------------------------------------

    async def _check_anomalies(self, session: AsyncSession, done: Sequence[Recomputed]) -> None:
        """Judges the recomputed hours against their hour-of-week history: stores the
        anomalies found (publishing each new one once) and removes those no longer found."""
        hours = [aligned_range(item.lo, item.hi, Granularity.HOUR, item.spec.zone) for item in done]
        windows = [
            (item.meter.id, lo - (HISTORY_WEEKS + 1) * _WEEK_MS, hi)
            for item, (lo, hi) in zip(done, hours, strict=True)
        ]
        histories = await repository.hourly_histories(session, windows)
        stored = await repository.anomalies_in(
            session, [(item.meter.id, lo, hi) for item, (lo, hi) in zip(done, hours, strict=True)]
        )
        now = datetime.now(UTC)
        for item, (hour_lo, hour_hi), (starts, values, completeness) in zip(
            done, hours, histories, strict=True
        ):
            if not len(starts):
                continue
            judged = np.where(completeness >= COMPLETE_HOUR, values, np.nan)
            found = {
                anomaly.start_ms: anomaly
                for anomaly in detect(starts, judged, item.site.time_zone, weeks=HISTORY_WEEKS)
                if hour_lo <= anomaly.start_ms < hour_hi
            }
            existing = stored.get(item.meter.id, {})
            await repository.delete_anomalies(
                session, [row.id for start, row in existing.items() if start not in found]
            )
            for start, anomaly in found.items():
                row = existing.get(start)
                if row is not None:  # still anomalous: refresh its numbers, announced already
                    row.value, row.expected, row.score = (
                        anomaly.value,
                        anomaly.expected,
                        anomaly.score,
                    )
                    continue
                await self._announce(session, item, anomaly, now)

    async def _announce(
        self, session: AsyncSession, item: Recomputed, anomaly: Anomaly, now: datetime
    ) -> None:
        """Stores a new anomaly and publishes it (through the outbox, once)."""
        meter = item.meter
        row = AnomalyRow(
            id=str(uuid.uuid4()),
            organization_id=meter.organization_id,
            meter_id=meter.id,
            site_id=meter.site_id,
            start_time=to_datetime(anomaly.start_ms),
            end_time=to_datetime(bucket_end(anomaly.start_ms, Granularity.HOUR, item.spec.zone)),
            value=anomaly.value,
            expected=anomaly.expected,
            score=anomaly.score,
            unit=item.unit,
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
                spec = spec_of(meter, site.time_zone)
                first, last = span
                month = bucket_start(first, Granularity.MONTH, spec.zone)
                month_end = bucket_end(month, Granularity.MONTH, spec.zone)
                change = Change(meter_id, first, min(last, month_end - 1))
                specs = {meter_id: (spec, normalise_unit(spec.unit).canonical)}
                await recompute(session, [change], {meter_id: meter}, {site.id: site}, specs)
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


def _parse_committed(data: bytes) -> telemetry_events_pb2.ReadingsCommitted:
    try:
        committed = json_format.Parse(
            data, telemetry_events_pb2.ReadingsCommitted(), ignore_unknown_fields=True
        )
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise PoisonMessage(f"not a ReadingsCommitted: {error}") from error
    if not is_uuid(committed.meter_id) or not committed.HasField("first_time"):
        raise PoisonMessage("ReadingsCommitted without a meter id or first time")
    return committed


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
