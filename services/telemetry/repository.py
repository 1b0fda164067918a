"""Queries of the telemetry schema. Repositories query; they never commit (the unit of work
does). Writes of readings go through the group-commit writer (ingest.py), not through here."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.telemetry.models import Batch, MeterInfo, Reading, RejectedReading


async def readings(
    session: AsyncSession,
    meter_id: str,
    start: datetime | None,
    end: datetime | None,
    after: datetime | None,
    limit: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(times in ms, values) of a meter's readings in [start, end), after `after`, in time
    order, at most `limit`."""
    query = (
        select(
            text("(extract(epoch from time) * 1000)::bigint"),
            Reading.value,
        )
        .where(Reading.meter_id == meter_id)
        .order_by(Reading.time)
        .limit(limit)
    )
    if start is not None:
        query = query.where(Reading.time >= start)
    if end is not None:
        query = query.where(Reading.time < end)
    if after is not None:
        query = query.where(Reading.time > after)
    rows = (await session.execute(query)).all()
    times = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    values = np.fromiter((row[1] for row in rows), dtype=np.float64, count=len(rows))
    return times, values


async def latest_reading(session: AsyncSession, meter_id: str) -> Reading | None:
    return (
        await session.scalars(
            select(Reading)
            .where(Reading.meter_id == meter_id)
            .order_by(Reading.time.desc())
            .limit(1)
        )
    ).first()


async def rejected_readings(
    session: AsyncSession, meter_id: str, before_id: int | None, limit: int
) -> list[RejectedReading]:
    query = (
        select(RejectedReading)
        .where(RejectedReading.meter_id == meter_id)
        .order_by(RejectedReading.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(RejectedReading.id < before_id)
    return list((await session.scalars(query)).all())


async def meter_infos(session: AsyncSession) -> list[MeterInfo]:
    return list((await session.scalars(select(MeterInfo))).all())


async def upsert_meter_info(session: AsyncSession, info: dict[str, object]) -> None:
    statement = insert(MeterInfo).values(**info)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[MeterInfo.id],
            set_={
                "register_type": statement.excluded.register_type,
                "rollover_value": statement.excluded.rollover_value,
                "state": statement.excluded.state,
                "update_time": statement.excluded.update_time,
            },
            where=MeterInfo.update_time <= statement.excluded.update_time,
        )
    )


async def purge_meter(session: AsyncSession, meter_id: str) -> None:
    """Deletes everything stored about a meter (devices.meter.purged)."""
    await session.execute(delete(Reading).where(Reading.meter_id == meter_id))
    await session.execute(delete(RejectedReading).where(RejectedReading.meter_id == meter_id))
    await session.execute(delete(Batch).where(Batch.meter_id == meter_id))
    await session.execute(delete(MeterInfo).where(MeterInfo.id == meter_id))


async def forget_batches(session: AsyncSession, before: datetime) -> None:
    """Batch ids older than the retention are forgotten (their readings stay unique anyway)."""
    await session.execute(delete(Batch).where(Batch.commit_time < before))
