"""Recomputing the rollups of many meters in one transaction: what the rollup consumer does
for a batch of committed-readings events, and what a rebuild does for a month of a meter.

Per meter: the quarter hours that readings timed first..last affect (rollups.affected_range),
computed column-wise from the readings around them (rollups.quarter_columns) and priced.
Every meter's quarter hours are COPYed into a staging table, and set-oriented SQL
- adds the difference between the staged and the stored rows to the site sums
  (services/analytics/aggregates.py explains how they stay exact under concurrency),
- upserts the meter rows,
- then level by level refreshes the hours, days and months holding them, each the sum of its
  stored children (so a day is exactly the sum of its hours and quarter hours), likewise,
- and sets the coincident peaks of the site buckets it touched.
Idempotent: the same readings give the same rows, and zero differences. The caller holds the
meters' locks (repository.lock_meters) for the whole transaction.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics import aggregates, pricing, repository
from services.analytics.models import MeterInfo, SiteInfo
from services.analytics.pricing import PriceList
from services.analytics.rollups import (
    Columns,
    Granularity,
    MeterSpec,
    affected_range,
    aligned_range,
    bucket_edges,
    bucket_spans,
    quarter_columns,
)
from services.analytics.rows import to_datetime
from services.kernel import pgcopy

# Staging tables with more rows than this get statistics (ANALYZE) before they are used.
ANALYZE_ABOVE_ROWS = 20_000
# Granularity levels in the staging table (and the order rows are written in).
LEVELS = (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY, Granularity.MONTH)
# The granularity name of a staged row (its level).
_LEVEL_NAME = "(ARRAY['QUARTER_HOUR','HOUR','DAY','MONTH'])[s.level + 1]"

# The site buckets touched at a level (coarser than quarter hours): they take the highest
# peak of their children.
_TOUCHED = """
    SELECT DISTINCT CAST(m.site_id AS uuid) AS site_id, m.commodity, m.direction, sm.unit,
        LEVEL_NAME AS granularity, s.bucket_start
    FROM analytics_staged s
    JOIN analytics_staged_meters sm ON sm.meter_id = s.meter_id
    JOIN analytics.meters m ON m.id = s.meter_id
    WHERE s.level = :level
"""


def sql(statement: str) -> TextClause:
    """A statement with the constant fragments TOUCHED, LEVEL_NAME and PEAK filled in."""
    for name, fragment in (
        ("TOUCHED", _TOUCHED),
        ("LEVEL_NAME", _LEVEL_NAME),
        ("PEAK", aggregates.SET_PEAK_FROM_CHILDREN),
    ):
        statement = statement.replace(name, fragment)
    return text(statement)


STAGED = pgcopy.row_dtype(
    [
        ("meter_id", pgcopy.UUID),
        ("level", pgcopy.INT2),
        ("bucket_start", pgcopy.TIMESTAMPTZ),
        ("bucket_end", pgcopy.TIMESTAMPTZ),
        ("value", pgcopy.FLOAT8),
        ("covered_ms", pgcopy.INT8),
        ("reading_count", pgcopy.INT4),
        ("reset_count", pgcopy.INT4),
        ("rollover_count", pgcopy.INT4),
        ("peak_demand", pgcopy.FLOAT8),
        ("peak_time", pgcopy.TIMESTAMPTZ),
        ("cost", pgcopy.FLOAT8),
        ("co2_kg", pgcopy.FLOAT8),
    ]
)
CREATE_STAGING = """
    CREATE TEMPORARY TABLE IF NOT EXISTS analytics_staged (
        meter_id uuid NOT NULL, level int2 NOT NULL,
        bucket_start timestamptz NOT NULL, bucket_end timestamptz NOT NULL,
        value float8 NOT NULL, covered_ms int8 NOT NULL, reading_count int4 NOT NULL,
        reset_count int4 NOT NULL, rollover_count int4 NOT NULL,
        peak_demand float8 NOT NULL, peak_time timestamptz NOT NULL,
        -- NaN: unpriced (NULL in the rollups).
        cost float8 NOT NULL, co2_kg float8 NOT NULL
    ) ON COMMIT DELETE ROWS;
    CREATE TEMPORARY TABLE IF NOT EXISTS analytics_staged_meters (
        meter_id uuid PRIMARY KEY, unit text NOT NULL, currency text,
        -- The recomputed quarter hours, [lo, hi), and the zone of the meter's buckets.
        zone text NOT NULL, lo timestamptz NOT NULL, hi timestamptz NOT NULL
    ) ON COMMIT DELETE ROWS;
    -- The hours, days and months of each zone holding recomputed quarter hours.
    CREATE TEMPORARY TABLE IF NOT EXISTS analytics_staged_spans (
        zone text NOT NULL, level int2 NOT NULL,
        bucket_start timestamptz NOT NULL, bucket_end timestamptz NOT NULL
    ) ON COMMIT DELETE ROWS
"""
COPY_STAGED = (
    "COPY analytics_staged (meter_id, level, bucket_start, bucket_end, value, covered_ms, "
    "reading_count, reset_count, rollover_count, peak_demand, peak_time, cost, co2_kg) "
    "FROM STDIN (FORMAT BINARY)"
)
# The readings of each window [lo, hi) plus the nearest one on each side, packed.
PACKED_READINGS = """
    SELECT w.position,
        string_agg(timestamptz_send(r.time), ''::bytea),
        string_agg(float8send(r.value), ''::bytea)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]))
        WITH ORDINALITY AS w(meter_id, lo, hi, position)
    CROSS JOIN LATERAL (
        (SELECT time, value FROM telemetry.readings
         WHERE meter_id = w.meter_id AND time < w.lo ORDER BY time DESC LIMIT 1)
        UNION ALL
        (SELECT time, value FROM telemetry.readings
         WHERE meter_id = w.meter_id AND time >= w.lo AND time < w.hi)
        UNION ALL
        (SELECT time, value FROM telemetry.readings
         WHERE meter_id = w.meter_id AND time >= w.hi ORDER BY time LIMIT 1)
    ) AS r
    GROUP BY w.position
"""
NEIGHBOURS = text(
    """
    SELECT w.position,
        (SELECT (extract(epoch FROM time) * 1000)::bigint FROM telemetry.readings
         WHERE meter_id = w.meter_id AND time < w.first ORDER BY time DESC LIMIT 1),
        (SELECT (extract(epoch FROM time) * 1000)::bigint FROM telemetry.readings
         WHERE meter_id = w.meter_id AND time > w.last ORDER BY time LIMIT 1)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:firsts AS timestamptz[]),
                CAST(:lasts AS timestamptz[])) WITH ORDINALITY AS w(meter_id, first, last, position)
    """
)
ADD_TO_SITES = sql(
    """
    INSERT INTO analytics.site_rollups AS t (
        site_id, organization_id, commodity, direction, unit, granularity, bucket_start,
        bucket_end, value, covered_ms, span_ms, reading_count, reset_count, rollover_count,
        cost, priced_rows, co2_kg, co2_rows, currency, peak_demand, peak_time)
    SELECT CAST(m.site_id AS uuid), m.organization_id, m.commodity, m.direction, sm.unit,
        LEVEL_NAME, s.bucket_start, max(s.bucket_end),
        sum(s.value - coalesce(r.value, 0)),
        sum(s.covered_ms - coalesce(r.covered_ms, 0)),
        sum(CASE WHEN r.meter_id IS NULL
            THEN extract(epoch FROM s.bucket_end - s.bucket_start) * 1000 ELSE 0 END),
        sum(s.reading_count - coalesce(r.reading_count, 0)),
        sum(s.reset_count - coalesce(r.reset_count, 0)),
        sum(s.rollover_count - coalesce(r.rollover_count, 0)),
        sum(coalesce(nullif(s.cost, 'NaN'), 0) - coalesce(r.cost, 0)),
        sum(CAST(s.cost <> 'NaN' AS int) - CAST(r.cost IS NOT NULL AS int)),
        sum(coalesce(nullif(s.co2_kg, 'NaN'), 0) - coalesce(r.co2_kg, 0)),
        sum(CAST(s.co2_kg <> 'NaN' AS int) - CAST(r.co2_kg IS NOT NULL AS int)),
        max(sm.currency),
        -- A quarter hour's peak is its own rate (coarser buckets: set from their children).
        CASE WHEN s.level = 0 THEN sum(s.value - coalesce(r.value, 0)) * 3600000.0
            / (extract(epoch FROM max(s.bucket_end) - s.bucket_start) * 1000) ELSE 0 END,
        s.bucket_start
    FROM analytics_staged s
    JOIN analytics_staged_meters sm ON sm.meter_id = s.meter_id
    JOIN analytics.meters m ON m.id = s.meter_id
    LEFT JOIN analytics.rollups r ON r.meter_id = s.meter_id
        AND r.granularity = LEVEL_NAME AND r.bucket_start = s.bucket_start
    GROUP BY m.site_id, m.organization_id, m.commodity, m.direction, sm.unit, s.level,
        s.bucket_start
    -- Unchanged quarter hours are left alone; coarser buckets are always touched (their peak
    -- may move even when their sum does not).
    HAVING s.level > 0
        OR sum(s.value - coalesce(r.value, 0)) <> 0
        OR sum(s.covered_ms - coalesce(r.covered_ms, 0)) <> 0
        OR bool_or(r.meter_id IS NULL)
        OR sum(s.reading_count - coalesce(r.reading_count, 0)) <> 0
        OR sum(s.reset_count + s.rollover_count
               - coalesce(r.reset_count + r.rollover_count, 0)) <> 0
        OR bool_or(nullif(s.cost, 'NaN') IS DISTINCT FROM r.cost)
        OR bool_or(nullif(s.co2_kg, 'NaN') IS DISTINCT FROM r.co2_kg)
    -- One global order (the key's): concurrent writers cannot deadlock.
    ORDER BY 1, s.level, s.bucket_start, 3, 4, 5
    ON CONFLICT ON CONSTRAINT site_rollups_pkey DO UPDATE SET
        bucket_end = excluded.bucket_end,
        value = t.value + excluded.value,
        covered_ms = t.covered_ms + excluded.covered_ms,
        span_ms = t.span_ms + excluded.span_ms,
        reading_count = t.reading_count + excluded.reading_count,
        reset_count = t.reset_count + excluded.reset_count,
        rollover_count = t.rollover_count + excluded.rollover_count,
        cost = t.cost + excluded.cost,
        priced_rows = t.priced_rows + excluded.priced_rows,
        co2_kg = t.co2_kg + excluded.co2_kg,
        co2_rows = t.co2_rows + excluded.co2_rows,
        currency = coalesce(excluded.currency, t.currency),
        peak_demand = CASE WHEN t.granularity = 'QUARTER_HOUR'
            THEN (t.value + excluded.value) * 3600000.0
                / (extract(epoch FROM t.bucket_end - t.bucket_start) * 1000)
            ELSE t.peak_demand END
    """
)
UPSERT_METER_ROWS = sql(
    """
    INSERT INTO analytics.rollups AS t (
        meter_id, organization_id, granularity, bucket_start, bucket_end, value, unit,
        completeness, covered_ms, reading_count, reset_count, rollover_count, peak_demand,
        peak_time, flags, cost, co2_kg, currency)
    SELECT s.meter_id, m.organization_id, LEVEL_NAME, s.bucket_start, s.bucket_end,
        s.value, sm.unit,
        least(1.0, s.covered_ms / (extract(epoch FROM s.bucket_end - s.bucket_start) * 1000)),
        s.covered_ms, s.reading_count, s.reset_count, s.rollover_count, s.peak_demand,
        s.peak_time,
        CAST(s.reset_count > 0 AS int) | (CAST(s.rollover_count > 0 AS int) << 1),
        nullif(s.cost, 'NaN'), nullif(s.co2_kg, 'NaN'),
        CASE WHEN s.cost <> 'NaN' THEN sm.currency END
    FROM analytics_staged s
    JOIN analytics_staged_meters sm ON sm.meter_id = s.meter_id
    JOIN analytics.meters m ON m.id = s.meter_id
    ON CONFLICT ON CONSTRAINT rollups_pkey DO UPDATE SET
        bucket_end = excluded.bucket_end, value = excluded.value, unit = excluded.unit,
        completeness = excluded.completeness, covered_ms = excluded.covered_ms,
        reading_count = excluded.reading_count, reset_count = excluded.reset_count,
        rollover_count = excluded.rollover_count, peak_demand = excluded.peak_demand,
        peak_time = excluded.peak_time, flags = excluded.flags, cost = excluded.cost,
        co2_kg = excluded.co2_kg, currency = excluded.currency
    WHERE (t.value, t.covered_ms, t.reading_count, t.reset_count, t.rollover_count,
           t.peak_demand, t.peak_time, t.cost, t.co2_kg, t.currency, t.bucket_end)
        IS DISTINCT FROM
          (excluded.value, excluded.covered_ms, excluded.reading_count, excluded.reset_count,
           excluded.rollover_count, excluded.peak_demand, excluded.peak_time, excluded.cost,
           excluded.co2_kg, excluded.currency, excluded.bucket_end)
    """
)
# The staged level's buckets (analytics_staged_spans) as sums of their stored children.
STAGE_LEVEL = text(
    """
    INSERT INTO analytics_staged
    SELECT sm.meter_id, w.level, w.bucket_start, w.bucket_end, a.value, a.covered_ms,
        a.reading_count, a.reset_count, a.rollover_count, a.peak_demand, a.peak_time, a.cost,
        a.co2_kg
    FROM analytics_staged_meters sm
    JOIN analytics_staged_spans w ON w.zone = sm.zone AND w.level = :level
        AND w.bucket_end > sm.lo AND w.bucket_start < sm.hi
    -- Lateral: one index range scan of the meter's children per bucket.
    CROSS JOIN LATERAL (
        SELECT sum(d.value) AS value, sum(d.covered_ms) AS covered_ms,
            sum(d.reading_count) AS reading_count, sum(d.reset_count) AS reset_count,
            sum(d.rollover_count) AS rollover_count, max(d.peak_demand) AS peak_demand,
            (array_agg(d.peak_time ORDER BY d.peak_demand DESC, d.bucket_start))[1]
                AS peak_time,
            coalesce(sum(d.cost), 'NaN') AS cost, coalesce(sum(d.co2_kg), 'NaN') AS co2_kg,
            count(*) AS children
        FROM analytics.rollups d
        WHERE d.meter_id = sm.meter_id AND d.granularity = :child
          AND d.bucket_start >= w.bucket_start AND d.bucket_start < w.bucket_end
    ) AS a
    WHERE a.children > 0
    """
)
COARSE_PEAKS = sql(
    """
    UPDATE analytics.site_rollups AS c SET PEAK
    FROM (TOUCHED) AS k
    WHERE c.site_id = k.site_id AND c.commodity = k.commodity AND c.direction = k.direction
      AND c.unit = k.unit AND c.granularity = k.granularity AND c.bucket_start = k.bucket_start
    """
)


@dataclass(frozen=True)
class Change:
    """Readings of a meter timed first_ms..last_ms were added."""

    meter_id: str
    first_ms: int
    last_ms: int


@dataclass(frozen=True)
class Recomputed:
    """What is recomputed for one meter: the quarter hours [lo, hi) the readings affect
    (whole local days when prices need them), within the local days [day_lo, day_hi)."""

    meter: MeterInfo
    site: SiteInfo
    spec: MeterSpec
    unit: str
    lo: int
    hi: int
    day_lo: int
    day_hi: int
    prices: PriceList


def merged(changes: Sequence[Change]) -> list[Change]:
    """One change per meter (the span of its changes), in meter order."""
    spans: dict[str, tuple[int, int]] = {}
    for change in changes:
        first, last = spans.get(change.meter_id, (change.first_ms, change.last_ms))
        spans[change.meter_id] = (min(first, change.first_ms), max(last, change.last_ms))
    return [Change(meter_id, *spans[meter_id]) for meter_id in sorted(spans)]


async def recompute(
    session: AsyncSession,
    changes: Sequence[Change],
    meters: dict[str, MeterInfo],
    sites: dict[str, SiteInfo],
    specs: dict[str, tuple[MeterSpec, str]],
) -> list[Recomputed]:
    """Recomputes the buckets the changes affect (one change per meter, `merged`). meters,
    sites and specs: each changed meter's, its site's and its MeterSpec with canonical unit.
    The caller holds the meters' locks."""
    if not changes:
        return []
    price_lists: dict[tuple[str, int, int], PriceList] = {}
    plans = []
    neighbours = await _neighbours(session, changes)
    for change, (previous, following) in zip(changes, neighbours, strict=True):
        meter = meters[change.meter_id]
        site = sites[meter.site_id]
        spec, unit = specs[change.meter_id]
        key = (meter.site_id, meter.commodity, meter.direction)
        prices = price_lists.get(key)
        if prices is None:
            prices = price_lists[key] = await pricing.price_list(session, meter, site.time_zone)
        lo, hi = affected_range(spec, change.first_ms, change.last_ms, previous, following)
        day_lo, day_hi = aligned_range(lo, hi, Granularity.DAY, spec.zone)
        if prices.whole_days:
            lo, hi = day_lo, day_hi
        plans.append(Recomputed(meter, site, spec, unit, lo, hi, day_lo, day_hi, prices))
    readings = await _readings(
        session, [(p.meter.id, p.lo, p.hi + p.spec.expected_interval_ms) for p in plans]
    )
    quarters: list[tuple[bytes, Columns]] = []
    for plan, (times, values) in zip(plans, readings, strict=True):
        columns = quarter_columns(times, values, plan.spec, plan.lo, plan.hi)
        prices = plan.prices
        if prices.tariff is not None or prices.factors:
            before = await pricing.month_to_date(session, plan.meter.id, prices, plan.lo)
            columns = Columns.of(pricing.price(columns.buckets(), prices, before))
        quarters.append((uuid.UUID(plan.meter.id).bytes, columns))
    await _write(session, _staged(quarters), plans)
    return plans


def _coarser_spans(plans: Sequence[Recomputed]) -> dict[str, list[Any]]:
    """The hours, days and months holding the recomputed quarter hours, per zone (meters of
    a zone share them), as columns for analytics_staged_spans."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for plan in plans:
        ranges.setdefault(plan.spec.time_zone, []).append((plan.lo, plan.hi))
    spans: set[tuple[str, int, int, int]] = set()
    for zone_name, zone_ranges in ranges.items():
        zone = ZoneInfo(zone_name)
        for lo, hi in _merged_ranges(zone_ranges):
            for level, granularity in enumerate(LEVELS[1:], start=1):
                if granularity is Granularity.MONTH:
                    month_lo, month_hi = aligned_range(lo, hi, granularity, zone)
                    spans.update(
                        (zone_name, level, a, b)
                        for a, b in bucket_spans(month_lo, month_hi, granularity, zone)
                    )
                else:
                    edges = bucket_edges(lo, hi, granularity, zone_name).tolist()
                    spans.update((zone_name, level, a, b) for a, b in itertools.pairwise(edges))
    ordered = sorted(spans)
    return {
        "zones": [span[0] for span in ordered],
        "levels": [span[1] for span in ordered],
        "starts": [to_datetime(span[2]) for span in ordered],
        "ends": [to_datetime(span[3]) for span in ordered],
    }


def _merged_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


async def _neighbours(
    session: AsyncSession, changes: Sequence[Change]
) -> list[tuple[int | None, int | None]]:
    """Per change: the times of the meter's stored readings just before first and after last."""
    rows = await session.execute(
        NEIGHBOURS,
        {
            "ids": [change.meter_id for change in changes],
            "firsts": [to_datetime(change.first_ms) for change in changes],
            "lasts": [to_datetime(change.last_ms) for change in changes],
        },
    )
    found = {int(position): (before, after) for position, before, after in rows}
    return [found.get(i + 1, (None, None)) for i in range(len(changes))]


async def _readings(
    session: AsyncSession, windows: Sequence[tuple[str, int, int]]
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    """Per (meter, lo, hi): the readings' times and values in [lo, hi) plus the nearest one
    on each side, in time order."""
    return [
        (pgcopy.from_timestamptz(times), values.astype(np.float64))
        for times, values in await repository.packed_windows(
            session, PACKED_READINGS, windows, (pgcopy.TIMESTAMPTZ, pgcopy.FLOAT8)
        )
    ]


def _staged(buckets: Sequence[tuple[bytes, Columns]]) -> npt.NDArray[np.void]:
    """Staging rows of (meter uuid, quarter hours) parts, in binary COPY form. (One array
    filled in place: concatenating would turn the big-endian fields native.)"""
    rows = pgcopy.new_rows(STAGED, sum(len(columns) for _, columns in buckets))
    offset = 0
    for meter_uuid, columns in buckets:
        part = rows[offset : offset + len(columns)]
        offset += len(columns)
        part["meter_id"] = np.frombuffer(meter_uuid, dtype="V16")[0]
        part["level"] = 0
        part["bucket_start"] = pgcopy.to_timestamptz(columns.start)
        part["bucket_end"] = pgcopy.to_timestamptz(columns.end)
        part["value"] = columns.value
        part["covered_ms"] = columns.covered
        part["reading_count"] = columns.readings
        part["reset_count"] = columns.resets
        part["rollover_count"] = columns.rollovers
        part["peak_demand"] = columns.peak_demand
        part["peak_time"] = pgcopy.to_timestamptz(columns.peak_time)
        part["cost"] = columns.cost
        part["co2_kg"] = columns.co2_kg
    return rows


async def _write(
    session: AsyncSession, quarters: npt.NDArray[np.void], plans: Sequence[Recomputed]
) -> None:
    """Writes the recomputed quarter hours, then level by level the hours, days and months
    holding them, each summed from its stored children."""
    await session.execute(text(CREATE_STAGING))
    await session.execute(
        text(
            "INSERT INTO analytics_staged_meters VALUES "
            "(:meter_id, :unit, :currency, :zone, :lo, :hi)"
        ),
        [
            {
                "meter_id": plan.meter.id,
                "unit": plan.unit,
                "currency": plan.prices.currency,
                "zone": plan.spec.time_zone,
                "lo": to_datetime(plan.lo),
                "hi": to_datetime(plan.hi),
            }
            for plan in plans
        ],
    )
    pg = await repository.driver_connection(session)
    async with pg.cursor() as cursor, cursor.copy(COPY_STAGED) as copy:
        await pgcopy.write(copy, quarters)
    if len(quarters) > ANALYZE_ABOVE_ROWS:
        # Statistics of the temporary table: without them PostgreSQL plans for a few rows.
        await session.execute(text("ANALYZE analytics_staged"))
    await _apply_staged(session, 0)
    # Tiers: the rest of each month depends on the recomputed days (repriced row by row).
    for plan in plans:
        await pricing.reprice_rest_of_month(session, plan.meter, plan.prices, plan.day_hi)
    await session.execute(
        text(
            "INSERT INTO analytics_staged_spans SELECT * FROM unnest(CAST(:zones AS text[]), "
            "CAST(:levels AS int2[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]))"
        ),
        _coarser_spans(plans),
    )
    for level in range(1, len(LEVELS)):
        await session.execute(text("DELETE FROM analytics_staged"))
        await session.execute(STAGE_LEVEL, {"level": level, "child": LEVELS[level - 1].value})
        await _apply_staged(session, level)


async def _apply_staged(session: AsyncSession, level: int) -> None:
    """Adds the staged rows' differences to the site sums (quarter hours' peaks with them),
    upserts them, and sets the peaks of the coarser site buckets they touched."""
    await session.execute(ADD_TO_SITES)
    await session.execute(UPSERT_METER_ROWS)
    if level > 0:
        child = LEVELS[level - 1].value
        await session.execute(COARSE_PEAKS, {"level": level, "child": child})
