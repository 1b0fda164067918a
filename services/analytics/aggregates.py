"""The sums kept in step with a meter's rollups: its MONTH rows (`refresh_months`, the sums
of its stored days) and its site's rows.

Site rollups: per site, commodity, direction and unit, the sums of its meters' rollups.

Site and organization queries read these instead of summing thousands of meter rows. They are
kept equal to the sum of the meter rows by adding every change of a meter row to its site row
(`apply_changes`), in the transaction that changes the meter row and under the meter's lock:
`INSERT … ON CONFLICT DO UPDATE SET value = value + excluded.value` is atomic per row, so
concurrent changes of different meters of one site add up. Rows are written in one global
order (granularity, then time), so concurrent writers cannot deadlock.

The coincident peak of a coarse bucket (the highest quarter-hour total of the site's meters)
is not additive: after adding, each touched coarse row takes the highest peak of its children
(hours from quarter hours, days from hours, months from days). The upsert holds those rows'
locks until commit, so a concurrent writer touching the same bucket waits, and then sees this
one's committed children when it computes the peak itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics import repository
from services.analytics.models import MeterInfo, SiteRollup
from services.analytics.rollups import Granularity, aggregate, aligned_range
from services.analytics.rows import bucket_of, rollup_row, row_values, to_datetime

# Written in this order (and then by time): a global order, so no two writers deadlock.
GRANULARITY_ORDER = {"QUARTER_HOUR": 0, "HOUR": 1, "DAY": 2, "MONTH": 3}
# Where a coarse bucket's peak comes from.
PEAK_CHILD = (("HOUR", "QUARTER_HOUR"), ("DAY", "HOUR"), ("MONTH", "DAY"))
ADDITIVE = (
    "value",
    "covered_ms",
    "span_ms",
    "reading_count",
    "reset_count",
    "rollover_count",
    "cost",
    "priced_rows",
    "co2_kg",
    "co2_rows",
)
_ONE_MS = timedelta(milliseconds=1)


def _add_to_site_rollups() -> Any:
    statement = insert(SiteRollup)
    return statement.on_conflict_do_update(
        constraint="site_rollups_pkey",
        set_={
            **{
                column: getattr(SiteRollup, column) + statement.excluded[column]
                for column in ADDITIVE
            },
            "bucket_end": statement.excluded.bucket_end,
            "currency": statement.excluded.currency,
        },
    )


# One statement, executed with many rows (SQLAlchemy batches them into multi-row VALUES, in
# the order given: the lock order).
_ADD_TO_SITE_ROLLUPS = _add_to_site_rollups()

_QUARTER_PEAKS = text(
    """
    UPDATE analytics.site_rollups
    SET peak_demand = value * 3600000.0 / (extract(epoch FROM bucket_end - bucket_start) * 1000),
        peak_time = bucket_start
    WHERE site_id = :site_id AND commodity = :commodity AND direction = :direction
      AND unit = :unit AND granularity = 'QUARTER_HOUR'
      AND bucket_start = ANY(CAST(:starts AS timestamptz[]))
    """
)
# The assignment giving a site bucket `c` the highest peak of its children (:child, their
# granularity); shared with services/analytics/recompute.py.
SET_PEAK_FROM_CHILDREN = """
    (peak_demand, peak_time) = (
        SELECT coalesce(k.peak_demand, 0), coalesce(k.peak_time, c.bucket_start)
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
        ) AS k ON true
    )
"""
_COARSE_PEAKS = text(
    """
    UPDATE analytics.site_rollups AS c SET PEAK
    WHERE c.site_id = :site_id AND c.commodity = :commodity AND c.direction = :direction
      AND c.unit = :unit AND c.granularity = :granularity
      AND c.bucket_start = ANY(CAST(:starts AS timestamptz[]))
    """.replace("PEAK", SET_PEAK_FROM_CHILDREN)
)
# Rows no meter contributes to any more (the meters' rows were deleted).
_DELETE_EMPTY = text(
    """
    DELETE FROM analytics.site_rollups
    WHERE site_id = :site_id AND commodity = :commodity AND direction = :direction
      AND unit = :unit AND span_ms <= 0
    """
)


def contribution(row: dict[str, Any]) -> tuple[float | int, ...]:
    """What one meter rollup row adds to its site row, in ADDITIVE order."""
    length_ms = (row["bucket_end"] - row["bucket_start"]) // _ONE_MS
    cost, co2 = row["cost"], row["co2_kg"]
    return (
        row["value"],
        row["covered_ms"],
        length_ms,
        row["reading_count"],
        row["reset_count"],
        row["rollover_count"],
        cost if cost is not None else 0.0,
        1 if cost is not None else 0,
        co2 if co2 is not None else 0.0,
        1 if co2 is not None else 0,
    )


async def apply_changes(
    session: AsyncSession,
    meter: MeterInfo,
    old_rows: Sequence[dict[str, Any]],
    new_rows: Sequence[dict[str, Any]],
) -> None:
    """Adds (new - old) of one meter's rollup rows to its site's rows.

    old_rows: the meter's rows as stored before the change (those the change replaces or
    deletes); new_rows: as written. Both as dicts of the rollups columns."""
    deltas: dict[tuple[str, datetime], list[float | int]] = {}
    ends: dict[tuple[str, datetime], datetime] = {}
    currency: str | None = None
    for sign, rows in ((-1, old_rows), (1, new_rows)):
        for row in rows:
            key = (row["granularity"], row["bucket_start"])
            delta = deltas.setdefault(key, [0] * len(ADDITIVE))
            for i, amount in enumerate(contribution(row)):
                delta[i] += sign * amount
            ends[key] = row["bucket_end"]
            if sign > 0 and row["currency"]:
                currency = row["currency"]
    # Quarter hours that did not change are left alone; coarse rows are always touched (their
    # peak may move even when their sum does not).
    touched = sorted(
        (key for key, delta in deltas.items() if key[0] != "QUARTER_HOUR" or any(delta)),
        key=lambda key: (GRANULARITY_ORDER[key[0]], key[1]),
    )
    if not touched:
        return
    site = {
        "site_id": meter.site_id,
        "commodity": meter.commodity,
        "direction": meter.direction,
        "unit": (new_rows or old_rows)[0]["unit"],
    }
    values = [
        {
            **site,
            "organization_id": meter.organization_id,
            "granularity": granularity,
            "bucket_start": start,
            "bucket_end": ends[(granularity, start)],
            **dict(zip(ADDITIVE, deltas[(granularity, start)], strict=True)),
            "currency": currency,
            "peak_demand": 0.0,
            "peak_time": start,
        }
        for granularity, start in touched
    ]
    await session.execute(_ADD_TO_SITE_ROLLUPS, values)
    await _update_peaks(session, site, touched)
    if any(deltas[key][ADDITIVE.index("span_ms")] < 0 for key in touched):
        await session.execute(_DELETE_EMPTY, site)


async def _update_peaks(
    session: AsyncSession, site: dict[str, Any], touched: list[tuple[str, datetime]]
) -> None:
    by_granularity: dict[str, list[datetime]] = {}
    for granularity, start in touched:
        by_granularity.setdefault(granularity, []).append(start)
    if "QUARTER_HOUR" in by_granularity:
        await session.execute(_QUARTER_PEAKS, {**site, "starts": by_granularity["QUARTER_HOUR"]})
    for granularity, child in PEAK_CHILD:
        if granularity in by_granularity:
            await session.execute(
                _COARSE_PEAKS,
                {
                    **site,
                    "granularity": granularity,
                    "child": child,
                    "starts": by_granularity[granularity],
                },
            )


async def refresh_months(
    session: AsyncSession, meter: MeterInfo, time_zone: str, lo_ms: int, hi_ms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rewrites the meter's MONTH rows of the local months overlapping [lo_ms, hi_ms) as the
    sums of their stored days. Returns the month rows before and after, for apply_changes."""
    zone = ZoneInfo(time_zone)
    month_lo, month_hi = aligned_range(lo_ms, hi_ms, Granularity.MONTH, zone)
    start, end = to_datetime(month_lo), to_datetime(month_hi)
    days = await repository.rollups(session, meter.id, Granularity.DAY.value, start, end)
    if not days:
        return [], []
    old = [
        row_values(row)
        for row in await repository.rollups(session, meter.id, Granularity.MONTH.value, start, end)
    ]
    currency = next((day.currency for day in days if day.currency), None)
    new = [
        rollup_row(meter, Granularity.MONTH, month, days[0].unit, currency)
        for month in aggregate([bucket_of(day) for day in days], Granularity.MONTH, zone)
    ]
    await repository.upsert_rollups(session, new)
    return old, new
