"""Queries of tariffs, tariff assignments and emission factors, and the rollup reads and writes
that pricing needs. Like every repository, it never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.devices.v1 import devices_pb2
from services.analytics.models import (
    EmissionFactor,
    MeterInfo,
    Rollup,
    Tariff,
    TariffAssignment,
)
from services.analytics.rollups import Granularity

EXPORT = devices_pb2.FLOW_DIRECTION_EXPORT

# --- tariffs -----------------------------------------------------------------------------------


async def tariff(
    session: AsyncSession, organization_id: str, tariff_id: str, *, lock: str | None = None
) -> Tariff | None:
    """The organization's tariff; lock "update" (changing it) or "share" (assigning it)."""
    query = select(Tariff).where(Tariff.id == tariff_id, Tariff.organization_id == organization_id)
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    return (await session.scalars(query)).one_or_none()


async def list_tariffs(
    session: AsyncSession, organization_id: str, after: tuple[str, str] | None, limit: int
) -> list[Tariff]:
    query = select(Tariff).where(Tariff.organization_id == organization_id)
    if after is not None:
        position = tuple_(*after, types=[Tariff.name.type, Tariff.id.type])
        query = query.where(tuple_(Tariff.name, Tariff.id) > position)
    query = query.order_by(Tariff.name, Tariff.id).limit(limit)
    return list((await session.scalars(query)).all())


async def count_tariffs(session: AsyncSession, organization_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Tariff).where(Tariff.organization_id == organization_id)
    )
    return int(count or 0)


# --- assignments -------------------------------------------------------------------------------


async def assignments_of_site(
    session: AsyncSession, organization_id: str, site_id: str
) -> list[TariffAssignment]:
    query = (
        select(TariffAssignment)
        .where(
            TariffAssignment.organization_id == organization_id,
            TariffAssignment.site_id == site_id,
        )
        .order_by(TariffAssignment.commodity, TariffAssignment.direction)
    )
    return list((await session.scalars(query)).all())


async def assignments_of_tariff(session: AsyncSession, tariff_id: str) -> list[TariffAssignment]:
    query = select(TariffAssignment).where(TariffAssignment.tariff_id == tariff_id)
    return list((await session.scalars(query)).all())


async def assignment(
    session: AsyncSession, organization_id: str, site_id: str, assignment_id: str
) -> TariffAssignment | None:
    query = select(TariffAssignment).where(
        TariffAssignment.id == assignment_id,
        TariffAssignment.organization_id == organization_id,
        TariffAssignment.site_id == site_id,
    )
    return (await session.scalars(query)).one_or_none()


async def put_assignment(session: AsyncSession, values: dict[str, Any]) -> None:
    """Inserts an assignment, replacing the site's earlier one for the same commodity and
    direction (atomically, so two concurrent assignments leave exactly one)."""
    statement = insert(TariffAssignment).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            constraint="tariff_assignments_one_per_meter_kind",
            set_={
                column: statement.excluded[column]
                for column in ("id", "organization_id", "tariff_id", "create_time")
            },
        )
    )


async def delete_assignments(session: AsyncSession, ids: Sequence[str]) -> None:
    if ids:
        await session.execute(delete(TariffAssignment).where(TariffAssignment.id.in_(ids)))


async def assigned_tariff(
    session: AsyncSession, site_id: str, commodity: int, direction: int
) -> Tariff | None:
    """The tariff assigned to a site for a commodity and direction."""
    query = (
        select(Tariff)
        .join(TariffAssignment, TariffAssignment.tariff_id == Tariff.id)
        .where(
            TariffAssignment.site_id == site_id,
            TariffAssignment.commodity == commodity,
            TariffAssignment.direction == direction,
        )
    )
    return (await session.scalars(query)).one_or_none()


# --- emission factors --------------------------------------------------------------------------


async def lock_emission_factors(
    session: AsyncSession, organization_id: str, commodity: int
) -> None:
    """Serialises changes of one organization's factors of a commodity (overlap checks)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('analytics.emission_factors:' || :key))"),
        {"key": f"{organization_id}:{commodity}"},
    )


async def emission_factors(
    session: AsyncSession, organization_id: str, commodity: int
) -> list[EmissionFactor]:
    query = (
        select(EmissionFactor)
        .where(
            EmissionFactor.organization_id == organization_id,
            EmissionFactor.commodity == commodity,
        )
        .order_by(EmissionFactor.effective_from)
    )
    return list((await session.scalars(query)).all())


async def overlapping_emission_factor(
    session: AsyncSession,
    organization_id: str,
    commodity: int,
    start: datetime,
    end: datetime | None,
) -> EmissionFactor | None:
    query = select(EmissionFactor).where(
        EmissionFactor.organization_id == organization_id,
        EmissionFactor.commodity == commodity,
        or_(EmissionFactor.effective_to.is_(None), EmissionFactor.effective_to > start),
    )
    if end is not None:
        query = query.where(EmissionFactor.effective_from < end)
    return (await session.scalars(query.limit(1))).first()


async def list_emission_factors(
    session: AsyncSession,
    organization_id: str,
    commodity: int | None,
    after: tuple[int, datetime, str] | None,
    limit: int,
) -> list[EmissionFactor]:
    query = select(EmissionFactor).where(EmissionFactor.organization_id == organization_id)
    if commodity is not None:
        query = query.where(EmissionFactor.commodity == commodity)
    if after is not None:
        columns = (EmissionFactor.commodity, EmissionFactor.effective_from, EmissionFactor.id)
        position = tuple_(*after, types=[column.type for column in columns])
        query = query.where(tuple_(*columns) > position)
    query = query.order_by(
        EmissionFactor.commodity, EmissionFactor.effective_from, EmissionFactor.id
    ).limit(limit)
    return list((await session.scalars(query)).all())


async def emission_factor(
    session: AsyncSession, organization_id: str, factor_id: str
) -> EmissionFactor | None:
    query = select(EmissionFactor).where(
        EmissionFactor.id == factor_id, EmissionFactor.organization_id == organization_id
    )
    return (await session.scalars(query)).one_or_none()


async def count_emission_factors(session: AsyncSession, organization_id: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(EmissionFactor)
        .where(EmissionFactor.organization_id == organization_id)
    )
    return int(count or 0)


# --- the rollups pricing reads and writes -----------------------------------------------------


async def priced_meters(
    session: AsyncSession,
    organization_id: str,
    site_id: str | None,
    commodity: int,
    direction: int | None,
) -> list[str]:
    """The meters a pricing change applies to (direction None: both)."""
    query = select(MeterInfo.id).where(
        MeterInfo.organization_id == organization_id, MeterInfo.commodity == commodity
    )
    if site_id is not None:
        query = query.where(MeterInfo.site_id == site_id)
    if direction == EXPORT:
        query = query.where(MeterInfo.direction == EXPORT)
    elif direction is not None:
        query = query.where(MeterInfo.direction != EXPORT)
    return list((await session.scalars(query.order_by(MeterInfo.id))).all())


async def quarter_span(
    session: AsyncSession, meter_id: str, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime] | None:
    """First and last stored quarter hour of a meter starting in [start, end) (open ends)."""
    conditions = [Rollup.meter_id == meter_id, Rollup.granularity == Granularity.QUARTER_HOUR.value]
    if start is not None:
        conditions.append(Rollup.bucket_start >= start)
    if end is not None:
        conditions.append(Rollup.bucket_start < end)
    row = (
        await session.execute(
            select(func.min(Rollup.bucket_start), func.max(Rollup.bucket_start)).where(
                and_(*conditions)
            )
        )
    ).one()
    if row[0] is None:
        return None
    return row[0], row[1]


async def consumption_between(
    session: AsyncSession, meter_id: str, start: datetime, end: datetime
) -> float:
    """Sum of the meter's stored quarter hours starting in [start, end)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(Rollup.value), 0.0)).where(
            Rollup.meter_id == meter_id,
            Rollup.granularity == Granularity.QUARTER_HOUR.value,
            Rollup.bucket_start >= start,
            Rollup.bucket_start < end,
        )
    )
    return float(total or 0.0)


_ROLLUPS = cast(Table, Rollup.__table__)
# One UPDATE, executed once per row (executemany): the rows are named by their primary key.
_SET_AMOUNTS = (
    _ROLLUPS.update()
    .where(
        _ROLLUPS.c.meter_id == bindparam("key_meter_id"),
        _ROLLUPS.c.granularity == bindparam("key_granularity"),
        _ROLLUPS.c.bucket_start == bindparam("key_bucket_start"),
    )
    .values(
        cost=bindparam("new_cost"),
        co2_kg=bindparam("new_co2_kg"),
        currency=bindparam("new_currency"),
    )
)


async def set_amounts(session: AsyncSession, amounts: Sequence[dict[str, Any]]) -> None:
    """Sets cost, co2_kg and currency of stored rows, each dict naming its row (meter_id,
    granularity, bucket_start) and the new cost, co2_kg and currency."""
    if not amounts:
        return
    await session.execute(
        _SET_AMOUNTS,
        [
            {
                "key_meter_id": item["meter_id"],
                "key_granularity": item["granularity"],
                "key_bucket_start": item["bucket_start"],
                "new_cost": item["cost"],
                "new_co2_kg": item["co2_kg"],
                "new_currency": item["currency"],
            }
            for item in amounts
        ],
    )
