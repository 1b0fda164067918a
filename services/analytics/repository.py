"""Queries of the analytics schema, and the read-only reads of telemetry's readings.

Repositories query; they never commit (the unit of work does).

Readings are read straight from `telemetry.readings` (same PostgreSQL database, another
service's schema), read-only. This is an agreement with the telemetry service, kept narrow on
purpose: its columns (meter_id uuid, time timestamptz, value double precision) and primary key
(meter_id, time) are the interface, and analytics never writes there. Telemetry's ListReadings
RPC would be the contract-only route, but it needs a user's credential (it narrows readings
to what a caller may see), and the consumer acts for no user; recomputing a day from its
window of readings is also a single index range scan this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.models import MeterInfo, Rollup, SiteInfo
from services.analytics.rollups import Reading


async def lock_meter(session: AsyncSession, meter_id: str) -> None:
    """Serialises recomputations of one meter's rollups (replicas share the consumer)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('analytics.rollups:' || :meter_id))"),
        {"meter_id": meter_id},
    )


async def reading_before(session: AsyncSession, meter_id: str, time: datetime) -> int | None:
    """Time (ms) of the meter's last reading strictly before `time`."""
    row = await session.execute(
        text(
            "SELECT (extract(epoch from time) * 1000)::bigint FROM telemetry.readings "
            "WHERE meter_id = :meter_id "
            "AND time < :time ORDER BY time DESC LIMIT 1"
        ),
        {"meter_id": meter_id, "time": time},
    )
    value = row.scalar_one_or_none()
    return int(value) if value is not None else None


async def reading_after(session: AsyncSession, meter_id: str, time: datetime) -> int | None:
    """Time (ms) of the meter's first reading strictly after `time`."""
    row = await session.execute(
        text(
            "SELECT (extract(epoch from time) * 1000)::bigint FROM telemetry.readings "
            "WHERE meter_id = :meter_id "
            "AND time > :time ORDER BY time LIMIT 1"
        ),
        {"meter_id": meter_id, "time": time},
    )
    value = row.scalar_one_or_none()
    return int(value) if value is not None else None


async def readings_window(
    session: AsyncSession, meter_id: str, start: datetime, end: datetime
) -> list[Reading]:
    """The readings in [start, end) plus the nearest one on each side, in time order: what
    rollups.window says determines the quarter hours of [start, end)."""
    rows = await session.execute(
        text(
            "(SELECT (extract(epoch from time) * 1000)::bigint AS t, value FROM telemetry.readings "
            "WHERE meter_id = :meter_id "
            "AND time < :start ORDER BY time DESC LIMIT 1) "
            "UNION ALL (SELECT (extract(epoch from time) * 1000)::bigint, value "
            "FROM telemetry.readings "
            "WHERE meter_id = :meter_id AND time >= :start AND time < :end) "
            "UNION ALL (SELECT (extract(epoch from time) * 1000)::bigint, value "
            "FROM telemetry.readings "
            "WHERE meter_id = :meter_id AND time >= :end ORDER BY time LIMIT 1) "
            "ORDER BY t"
        ),
        {"meter_id": meter_id, "start": start, "end": end},
    )
    return [Reading(int(t), float(value)) for t, value in rows]


async def upsert_rollups(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Inserts or replaces buckets: writing the same numbers again changes nothing."""
    for chunk_start in range(0, len(rows), 1000):
        chunk = rows[chunk_start : chunk_start + 1000]
        statement = insert(Rollup).values(list(chunk))
        keys = ("meter_id", "granularity", "bucket_start")
        statement = statement.on_conflict_do_update(
            constraint="rollups_pkey",
            set_={column: statement.excluded[column] for column in chunk[0] if column not in keys},
        )
        await session.execute(statement)


async def rollups(
    session: AsyncSession, meter_id: str, granularity: str, start: datetime, end: datetime
) -> list[Rollup]:
    """The stored buckets of a meter starting in [start, end), in time order."""
    result = await session.scalars(
        select(Rollup)
        .where(
            Rollup.meter_id == meter_id,
            Rollup.granularity == granularity,
            Rollup.bucket_start >= start,
            Rollup.bucket_start < end,
        )
        .order_by(Rollup.bucket_start)
    )
    return list(result)


async def meter_info(session: AsyncSession, meter_id: str) -> MeterInfo | None:
    return await session.get(MeterInfo, meter_id)


async def site_info(session: AsyncSession, site_id: str) -> SiteInfo | None:
    return await session.get(SiteInfo, site_id)


async def upsert_meter_info(session: AsyncSession, values: dict[str, Any]) -> None:
    statement = insert(MeterInfo).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[MeterInfo.id],
            set_={column: statement.excluded[column] for column in values if column != "id"},
            # Events may arrive out of order: an older version never overwrites a newer one.
            where=MeterInfo.update_time <= statement.excluded.update_time,
        )
    )


async def upsert_site_info(session: AsyncSession, values: dict[str, Any]) -> None:
    statement = insert(SiteInfo).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[SiteInfo.id],
            set_={column: statement.excluded[column] for column in values if column != "id"},
            where=SiteInfo.update_time <= statement.excluded.update_time,
        )
    )
