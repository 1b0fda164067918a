"""Recomputing the rollups of many meters in one transaction: what the rollup consumer does
for a batch of committed-readings events, and what a rebuild does for a month of a meter.

Per meter: the quarter hours that readings timed first..last affect (rollups.affected_range),
widened to whole local days so that the hours and days holding them are rebuilt from complete
quarter hours, computed column-wise from the readings (rollups.quarter_columns) and priced.
Then every meter's buckets are COPYed into a staging table, and set-oriented SQL
- adds the difference between the staged and the stored rows to the site sums
  (services/analytics/aggregates.py explains how they stay exact under concurrency),
- upserts the meter rows,
- refreshes the months holding the recomputed days (the sums of their days), likewise,
- sets the coincident peaks of the site buckets it touched.
Idempotent: the same readings give the same rows, and zero differences. The caller holds the
meters' locks (repository.lock_meters) for the whole transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics import pricing, repository
from services.analytics.models import MeterInfo, SiteInfo
from services.analytics.pricing import PriceList
from services.analytics.rollups import (
    Columns,
    Granularity,
    MeterSpec,
    affected_range,
    aggregate_columns,
    aligned_range,
    bucket_spans,
    quarter_columns,
)
from services.analytics.rows import to_datetime
from services.kernel import pgcopy

# Granularity levels in the staging table (and the order rows are written in).
LEVELS = (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY, Granularity.MONTH)
MONTH_LEVEL = LEVELS.index(Granularity.MONTH)
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
    """A statement with the constant fragments LEVEL_NAME and TOUCHED filled in."""
    return text(statement.replace("TOUCHED", _TOUCHED).replace("LEVEL_NAME", _LEVEL_NAME))


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
READING = pgcopy.row_dtype(
    [("position", pgcopy.INT4), ("time", pgcopy.TIMESTAMPTZ), ("value", pgcopy.FLOAT8)]
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
        meter_id uuid PRIMARY KEY, unit text NOT NULL, currency text
    ) ON COMMIT DELETE ROWS;
    CREATE TEMPORARY TABLE IF NOT EXISTS analytics_staged_months (
        meter_id uuid NOT NULL, month_start timestamptz NOT NULL, month_end timestamptz NOT NULL
    ) ON COMMIT DELETE ROWS
"""
COPY_STAGED = (
    "COPY analytics_staged (meter_id, level, bucket_start, bucket_end, value, covered_ms, "
    "reading_count, reset_count, rollover_count, peak_demand, peak_time, cost, co2_kg) "
    "FROM STDIN (FORMAT BINARY)"
)
# The readings of each window [lo, hi) plus the nearest one on each side.
COPY_READINGS = """
    COPY (
        SELECT w.position::int4, r.time, r.value
        FROM unnest(%s::uuid[], %s::timestamptz[], %s::timestamptz[])
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
    ) TO STDOUT (FORMAT BINARY)
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
STAGE_MONTHS = text(
    """
    INSERT INTO analytics_staged
    SELECT d.meter_id, 3, w.month_start, w.month_end, sum(d.value), sum(d.covered_ms),
        sum(d.reading_count), sum(d.reset_count), sum(d.rollover_count), max(d.peak_demand),
        (array_agg(d.peak_time ORDER BY d.peak_demand DESC, d.bucket_start))[1],
        coalesce(sum(d.cost), 'NaN'), coalesce(sum(d.co2_kg), 'NaN')
    FROM analytics_staged_months w
    JOIN analytics.rollups d ON d.meter_id = w.meter_id AND d.granularity = 'DAY'
        AND d.bucket_start >= w.month_start AND d.bucket_start < w.month_end
    GROUP BY d.meter_id, w.month_start, w.month_end
    """
)
COARSE_PEAKS = sql(
    """
    UPDATE analytics.site_rollups AS c
    SET (peak_demand, peak_time) = (
        SELECT coalesce(p.peak_demand, 0), coalesce(p.peak_time, c.bucket_start)
        FROM (SELECT 1) AS one
        LEFT JOIN LATERAL (
            SELECT child.peak_demand, child.peak_time
            FROM analytics.site_rollups AS child
            WHERE child.site_id = c.site_id AND child.commodity = c.commodity
              AND child.direction = c.direction AND child.unit = c.unit
              AND child.granularity = :child
              AND child.bucket_start >= c.bucket_start AND child.bucket_start < c.bucket_end
            ORDER BY child.peak_demand DESC, child.bucket_start
            LIMIT 1
        ) AS p ON true)
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
    """What was recomputed for one meter: the quarter hours the readings affect, [lo, hi),
    within the whole local days [day_lo, day_hi)."""

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
    neighbours = await _neighbours(session, changes)
    plans = []
    for change, (previous, following) in zip(changes, neighbours, strict=True):
        meter = meters[change.meter_id]
        spec, unit = specs[change.meter_id]
        lo, hi = affected_range(spec, change.first_ms, change.last_ms, previous, following)
        day_lo, day_hi = aligned_range(lo, hi, Granularity.DAY, spec.zone)
        plans.append((change, meter, spec, unit, lo, hi, day_lo, day_hi))
    readings = await _readings(
        session,
        [(p[0].meter_id, p[6], p[7] + p[2].expected_interval_ms) for p in plans],
    )
    price_lists: dict[tuple[str, int, int], PriceList] = {}
    staged: list[tuple[bytes, int, Columns]] = []
    meter_rows: list[tuple[str, str, str | None]] = []
    months: list[dict[str, object]] = []
    done = []
    for (_, meter, spec, unit, lo, hi, day_lo, day_hi), (times, values) in zip(
        plans, readings, strict=True
    ):
        site = sites[meter.site_id]
        quarters = quarter_columns(times, values, spec, day_lo, day_hi)
        key = (meter.site_id, meter.commodity, meter.direction)
        prices = price_lists.get(key)
        if prices is None:
            prices = price_lists[key] = await pricing.price_list(session, meter, site.time_zone)
        if prices.tariff is not None or prices.factors:
            before = await pricing.month_to_date(session, meter.id, prices, day_lo)
            quarters = Columns.of(pricing.price(quarters.buckets(), prices, before))
        zone = site.time_zone
        meter_uuid = uuid.UUID(meter.id).bytes
        staged.append((meter_uuid, 0, quarters))
        staged.append((meter_uuid, 1, aggregate_columns(quarters, Granularity.HOUR, zone)))
        staged.append((meter_uuid, 2, aggregate_columns(quarters, Granularity.DAY, zone)))
        meter_rows.append((meter.id, unit, prices.currency))
        month_lo, month_hi = aligned_range(day_lo, day_hi, Granularity.MONTH, spec.zone)
        months.extend(
            {"meter_id": meter.id, "start": to_datetime(a), "end": to_datetime(b)}
            for a, b in bucket_spans(month_lo, month_hi, Granularity.MONTH, spec.zone)
        )
        done.append(Recomputed(meter, site, spec, unit, lo, hi, day_lo, day_hi, prices))
    await _write(session, _staged(staged), meter_rows, months, done)
    return done


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
        (pgcopy.from_timestamptz(rows["time"]), rows["value"].astype(np.float64))
        for rows in await repository.per_window(session, COPY_READINGS, READING, "time", windows)
    ]


def _staged(buckets: Sequence[tuple[bytes, int, Columns]]) -> npt.NDArray[np.void]:
    """Staging rows of (meter uuid, level, buckets) parts, in binary COPY form. (One array
    filled in place: concatenating would turn the big-endian fields native.)"""
    rows = pgcopy.new_rows(STAGED, sum(len(columns) for _, _, columns in buckets))
    offset = 0
    for meter_uuid, level, columns in buckets:
        part = rows[offset : offset + len(columns)]
        offset += len(columns)
        part["meter_id"] = np.frombuffer(meter_uuid, dtype="V16")[0]
        part["level"] = level
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
    session: AsyncSession,
    staged: npt.NDArray[np.void],
    meter_rows: Sequence[tuple[str, str, str | None]],
    months: Sequence[dict[str, object]],
    done: Sequence[Recomputed],
) -> None:
    await session.execute(text(CREATE_STAGING))
    await session.execute(
        text("INSERT INTO analytics_staged_meters VALUES (:meter_id, :unit, :currency)"),
        [{"meter_id": m, "unit": u, "currency": c} for m, u, c in meter_rows],
    )
    pg = await repository.driver_connection(session)
    async with pg.cursor() as cursor, cursor.copy(COPY_STAGED) as copy:
        await pgcopy.write(copy, staged)
    await _apply_staged(session, levels=(0, 1, 2))
    # Tiers: the rest of each month depends on the recomputed days (repriced row by row).
    for item in done:
        await pricing.reprice_rest_of_month(session, item.meter, item.prices, item.day_hi)
    await session.execute(text("DELETE FROM analytics_staged"))
    await session.execute(
        text("INSERT INTO analytics_staged_months VALUES (:meter_id, :start, :end)"), months
    )
    await session.execute(STAGE_MONTHS)
    await _apply_staged(session, levels=(MONTH_LEVEL,))


async def _apply_staged(session: AsyncSession, levels: Sequence[int]) -> None:
    """Adds the staged rows' differences to the site sums (quarter hours' peaks with them),
    upserts them, and sets the peaks of the coarser site buckets they touched (finer levels
    first: coarser peaks read them)."""
    await session.execute(ADD_TO_SITES)
    await session.execute(UPSERT_METER_ROWS)
    for level in levels:
        if level > 0:
            child = LEVELS[level - 1].value
            await session.execute(COARSE_PEAKS, {"level": level, "child": child})
