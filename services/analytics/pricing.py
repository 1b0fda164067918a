"""Cost and CO2 of the meter rollups, and their repricing when tariffs or factors change.

Every stored quarter hour of a meter carries its cost (the tariff assigned to the meter's site
for its commodity and direction, services/analytics/tariffs.py) and its emissions (the
organization's emission factors for the commodity); hours and days carry the sums of their
quarter hours, coarser buckets sum days at query time (rollups.aggregate). A quarter hour no
tariff version covers has no cost, one no factor covers no CO2 (NULL, unset in the API).
Export meters are credited at the feed-in price (a negative cost) and carry no CO2: the site
did not emit it, and avoided emissions are not claimed.

Two writers keep them right:
- the rollup consumer prices the quarter hours it recomputes (`price_recomputed`); with
  tiered blocks the rest of that billing month depends on them and is repriced too;
- a change of a tariff, an assignment or an emission factor publishes
  `analytics.pricing.changed` through the outbox in the same transaction; its durable consumer
  (`Repricer`) reprices the stored rollups of the meters concerned, one local month per
  transaction under the meter's lock, always with the definitions current at that moment, so
  any order of events converges.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf import json_format, struct_pb2
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.devices.v1 import devices_pb2
from services.analytics import aggregates, repository, tariff_repository
from services.analytics.models import EmissionFactor as EmissionFactorRow
from services.analytics.models import MeterInfo
from services.analytics.rollups import (
    Bucket,
    Granularity,
    aggregate,
    bucket_end,
    bucket_start,
)
from services.analytics.rows import bucket_of, row_values, to_datetime, to_ms
from services.analytics.tariff_validation import pricing_tariff
from services.analytics.tariffs import EmissionFactor, Tariff, price_quarters
from services.kernel.database import Database
from services.kernel.messaging import PoisonMessage

log = logging.getLogger(__name__)

EXPORT = devices_pb2.FLOW_DIRECTION_EXPORT
IMPORT = devices_pb2.FLOW_DIRECTION_IMPORT


@dataclass(frozen=True)
class PriceList:
    """What prices one meter's quarter hours: the tariff assigned to its site for its
    commodity and direction (None: unpriced) and the emission factors of its commodity."""

    time_zone: str
    tariff: Tariff | None = None
    currency: str | None = None
    export: bool = False
    factors: tuple[EmissionFactor, ...] = ()

    @property
    def tiered(self) -> bool:
        """Costs depend on the consumption earlier in the billing month."""
        return (
            self.tariff is not None
            and not self.export
            and any(version.tiers for version in self.tariff.versions)
        )

    @property
    def whole_days(self) -> bool:
        """Costs depend on whole local days: tiers (the month's consumption before) or a
        standing charge (spread over every quarter hour of the day), so recompute whole days."""
        return self.tiered or (
            self.tariff is not None
            and not self.export
            and any(version.standing_charge_per_day for version in self.tariff.versions)
        )

    def currency_of(self, quarter: Bucket) -> str | None:
        return self.currency if quarter.cost is not None else None


# --- pure pricing ------------------------------------------------------------------------------


def price(
    quarters: Sequence[Bucket], prices: PriceList, month_to_date: float = 0.0
) -> list[Bucket]:
    """The quarter hours (time-ordered) with cost and co2_kg set.

    month_to_date: consumption of the first quarter hour's billing month before it (tiers).
    Tiers count all of the month's consumption, also where no version is in force."""
    costs = _costs(quarters, prices, month_to_date)
    return [
        replace(quarter, cost=cost, co2_kg=_co2(quarter, prices))
        for quarter, cost in zip(quarters, costs, strict=True)
    ]


def _costs(
    quarters: Sequence[Bucket], prices: PriceList, month_to_date: float
) -> list[float | None]:
    tariff = prices.tariff
    costs: list[float | None] = [None] * len(quarters)
    if tariff is None:
        return costs
    # Runs of quarter hours a version covers, each with the month's consumption before it.
    zone = ZoneInfo(prices.time_zone)
    runs: list[tuple[int, int, float]] = []
    month: tuple[int, int] | None = None
    month_total = month_to_date
    run_start: int | None = None
    run_month_total = 0.0
    for i, quarter in enumerate(quarters):
        if month is None or not month[0] <= quarter.start_ms < month[1]:
            if month is not None:
                month_total = 0.0
            first = bucket_start(quarter.start_ms, Granularity.MONTH, zone)
            month = (first, bucket_end(first, Granularity.MONTH, zone))
        covered = tariff.version_at(quarter.start_ms) is not None
        if covered and run_start is None:
            run_start, run_month_total = i, month_total
        elif not covered and run_start is not None:
            runs.append((run_start, i, run_month_total))
            run_start = None
        month_total += quarter.value
    if run_start is not None:
        runs.append((run_start, len(quarters), run_month_total))
    for start, end, before in runs:
        costs[start:end] = price_quarters(
            quarters[start:end],
            tariff,
            prices.time_zone,
            export=prices.export,
            month_to_date=before,
        )
    return costs


def _co2(quarter: Bucket, prices: PriceList) -> float | None:
    if prices.export:
        return None
    for factor in prices.factors:
        if factor.effective_from_ms <= quarter.start_ms and (
            factor.effective_to_ms is None or quarter.start_ms < factor.effective_to_ms
        ):
            return quarter.value * factor.kg_per_unit
    return None


# --- the pricing.changed event -----------------------------------------------------------------


@dataclass(frozen=True)
class PricingChange:
    """What `analytics.pricing.changed` names: the meters of an organization of a commodity,
    on one site (None: every site) and of one direction (None: both), whose buckets in
    [start_ms, end_ms) (None: open) are to be repriced."""

    organization_id: str
    commodity: int
    site_id: str | None = None
    direction: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    reason: str = ""

    def to_event(self) -> struct_pb2.Struct:
        """The event (a JSON object; internal to analytics, so no contract message)."""
        payload: dict[str, Any] = {
            "organizationId": self.organization_id,
            "commodity": devices_pb2.Commodity.Name(self.commodity),  # type: ignore[arg-type]
            "reason": self.reason,
        }
        if self.site_id is not None:
            payload["siteId"] = self.site_id
        if self.direction is not None:
            payload["direction"] = devices_pb2.FlowDirection.Name(self.direction)  # type: ignore[arg-type]
        if self.start_ms is not None:
            payload["startTime"] = _rfc3339(self.start_ms)
        if self.end_ms is not None:
            payload["endTime"] = _rfc3339(self.end_ms)
        return json_format.ParseDict(payload, struct_pb2.Struct())

    @classmethod
    def from_event(cls, data: bytes) -> PricingChange:
        try:
            payload = json.loads(data)
            direction = payload.get("direction")
            return cls(
                organization_id=str(payload["organizationId"]),
                commodity=devices_pb2.Commodity.Value(payload["commodity"]),
                site_id=payload.get("siteId"),
                direction=(
                    devices_pb2.FlowDirection.Value(direction) if direction is not None else None
                ),
                start_ms=_parse_time(payload.get("startTime")),
                end_ms=_parse_time(payload.get("endTime")),
                reason=str(payload.get("reason", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PoisonMessage(f"not an analytics.pricing.changed event: {error}") from error


def _rfc3339(ms: int) -> str:
    return to_datetime(ms).isoformat().replace("+00:00", "Z")


def _parse_time(text: str | None) -> int | None:
    if text is None:
        return None
    return to_ms(datetime.fromisoformat(text))


# --- prices and rollups in the database --------------------------------------------------------


async def price_list(session: AsyncSession, meter: MeterInfo, time_zone: str) -> PriceList:
    """The meter's prices as currently defined (read under the meter's lock, so a repricing
    that waits for it sees every change committed before)."""
    export = meter.direction == EXPORT
    tariff = await tariff_repository.assigned_tariff(
        session, meter.site_id, meter.commodity, EXPORT if export else IMPORT
    )
    factors = (
        ()
        if export
        else tuple(
            _factor(row)
            for row in await tariff_repository.emission_factors(
                session, meter.organization_id, meter.commodity
            )
        )
    )
    return PriceList(
        time_zone=time_zone,
        tariff=pricing_tariff(tariff.versions, tariff.currency_code) if tariff else None,
        currency=tariff.currency_code if tariff else None,
        export=export,
        factors=factors,
    )


def _factor(row: EmissionFactorRow) -> EmissionFactor:
    return EmissionFactor(
        kg_per_unit=row.kg_per_unit,
        effective_from_ms=to_ms(row.effective_from),
        effective_to_ms=to_ms(row.effective_to) if row.effective_to is not None else None,
    )


async def month_to_date(
    session: AsyncSession, meter_id: str, prices: PriceList, at_ms: int
) -> float:
    """Stored consumption of at_ms's billing month before at_ms (0 unless tiers need it)."""
    if not prices.tiered:
        return 0.0
    month = bucket_start(at_ms, Granularity.MONTH, ZoneInfo(prices.time_zone))
    if month == at_ms:
        return 0.0
    return await tariff_repository.consumption_between(
        session, meter_id, to_datetime(month), to_datetime(at_ms)
    )


async def price_recomputed(
    session: AsyncSession, meter: MeterInfo, time_zone: str, quarters: Sequence[Bucket]
) -> tuple[list[Bucket], PriceList]:
    """Prices quarter hours the rollup consumer recomputed (whole local days, time-ordered)."""
    prices = await price_list(session, meter, time_zone)
    if not quarters:
        return [], prices
    before = await month_to_date(session, meter.id, prices, quarters[0].start_ms)
    return price(quarters, prices, before), prices


async def reprice_rest_of_month(
    session: AsyncSession, meter: MeterInfo, prices: PriceList, after_ms: int
) -> None:
    """With tiered blocks, the stored quarter hours after a recomputed range (ending at a
    local midnight, after_ms) until the end of its billing month depend on the consumption
    before them: repriced (a late reading moves the later block thresholds)."""
    if not prices.tiered:
        return
    zone = ZoneInfo(prices.time_zone)
    month_end = bucket_end(
        bucket_start(after_ms - 1, Granularity.MONTH, zone), Granularity.MONTH, zone
    )
    if after_ms < month_end:
        await reprice(session, meter, prices, after_ms, month_end)


async def reprice(
    session: AsyncSession, meter: MeterInfo, prices: PriceList, start_ms: int, end_ms: int
) -> int:
    """Reprices the meter's stored quarter hours of [start_ms, end_ms) (whole local days of
    prices.time_zone) and sets their hours' and days' sums. Writes only what changed; returns
    how many quarter hours did. The caller holds the meter's lock."""
    start, end = to_datetime(start_ms), to_datetime(end_ms)
    rows = await repository.rollups(session, meter.id, Granularity.QUARTER_HOUR.value, start, end)
    if not rows:
        return 0
    before = await month_to_date(session, meter.id, prices, to_ms(rows[0].bucket_start))
    quarters = price([bucket_of(row) for row in rows], prices, before)
    old_quarter_rows: list[dict[str, Any]] = []
    new_quarter_rows: list[dict[str, Any]] = []
    for row, quarter in zip(rows, quarters, strict=True):
        new = _amounts(quarter, prices)
        if (row.cost, row.co2_kg, row.currency) != (new["cost"], new["co2_kg"], new["currency"]):
            old_quarter_rows.append(row_values(row))
            new_quarter_rows.append(row_values(row) | new)
    if not new_quarter_rows:
        return 0
    old_rows, new_rows = old_quarter_rows, list(new_quarter_rows)
    zone = ZoneInfo(prices.time_zone)
    for granularity in (Granularity.HOUR, Granularity.DAY):
        sums = {bucket.start_ms: bucket for bucket in aggregate(quarters, granularity, zone)}
        for row in await repository.rollups(session, meter.id, granularity.value, start, end):
            bucket = sums.get(to_ms(row.bucket_start))
            if bucket is None:
                continue
            new = _amounts(bucket, prices)
            if (row.cost, row.co2_kg, row.currency) != (
                new["cost"],
                new["co2_kg"],
                new["currency"],
            ):
                old_rows.append(row_values(row))
                new_rows.append(row_values(row) | new)
    await tariff_repository.set_amounts(session, new_rows)
    old_months, new_months = await aggregates.refresh_months(
        session, meter, prices.time_zone, start_ms, end_ms
    )
    await aggregates.apply_changes(session, meter, old_rows + old_months, new_rows + new_months)
    return len(new_quarter_rows)


def _amounts(bucket: Bucket, prices: PriceList) -> dict[str, Any]:
    return {"cost": bucket.cost, "co2_kg": bucket.co2_kg, "currency": prices.currency_of(bucket)}


# --- the repricing consumer ----------------------------------------------------------------------

Progress = Callable[[], Awaitable[None]]


# Recomputes a meter's buckets from its readings timed first_ms..last_ms (the rollup
# consumer's RollupMaintainer.recompute_meter).
Recompute = Callable[[str, int, int], Awaitable[object]]


class Repricer:
    """The durable consumer of analytics.pricing.changed."""

    def __init__(self, database: Database, recompute: Recompute) -> None:
        self.database = database
        self.recompute = recompute

    async def on_pricing_changed(self, message: Msg) -> None:
        change = PricingChange.from_event(message.data)
        async with self.database.transaction() as session:
            meters = await tariff_repository.priced_meters(
                session,
                change.organization_id,
                change.site_id,
                change.commodity,
                change.direction,
            )
        for meter_id in meters:
            # A long repricing tells JetStream it is alive after each committed month.
            await self.reprice_meter(meter_id, change.start_ms, change.end_ms, message.in_progress)

    async def reprice_meter(
        self,
        meter_id: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Reprices a meter's stored rollups in [start_ms, end_ms) (None: open), widened to
        whole local months, one month per transaction. Returns how many quarter hours changed."""
        async with self.database.transaction() as session:
            # Under the lock: a recompute that priced with the old definitions has committed
            # its rows (even in months not stored before), and later ones price with the new.
            await repository.lock_meter(session, meter_id)
            span = await tariff_repository.quarter_span(
                session,
                meter_id,
                to_datetime(start_ms) if start_ms is not None else None,
                to_datetime(end_ms) if end_ms is not None else None,
            )
        if span is None:
            return 0
        cursor, last = to_ms(span[0]), to_ms(span[1])
        changed = 0
        while cursor <= last:
            async with self.database.transaction() as session:
                await repository.lock_meter(session, meter_id)
                meter = await repository.meter_info(session, meter_id)
                site = await repository.site_info(session, meter.site_id) if meter else None
                if meter is None or site is None:
                    return changed
                prices = await price_list(session, meter, site.time_zone)
                # Month bounds in the zone read now: hours and days are whole in it.
                zone = ZoneInfo(site.time_zone)
                month = bucket_start(cursor, Granularity.MONTH, zone)
                cursor = bucket_end(month, Granularity.MONTH, zone)
                if not prices.whole_days:
                    changed += await reprice(session, meter, prices, month, cursor)
            if prices.whole_days:
                # A standing charge or tiers need every quarter hour of a day, also those no
                # reading was stored for: recomputed from the readings, priced on the way.
                await self.recompute(meter_id, month, cursor - 1)
            if progress is not None:
                await progress()
        log.info("repriced meter %s: %d quarter hours changed", meter_id, changed)
        return changed
