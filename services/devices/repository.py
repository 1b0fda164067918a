"""Queries for the devices service's tables. Functions add and query; they never commit.

Every query about sites and meters is scoped to one organization, and for a viewer to the
meters assigned to them (`viewer` is then their user id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    any_,
    bindparam,
    exists,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from services.devices.models import IngestKey, Meter, MeterAssignee, MeterToken, Site
from services.devices.validation import Connectivity, MeterState

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DECOMMISSIONED = MeterState.DECOMMISSIONED.value

# How a read locks the rows it returns until the transaction ends: "update" (FOR UPDATE) to
# change or delete them, "share" (FOR SHARE) to add something that depends on them. A share
# lock waits for a concurrent delete to commit and then sees its delete_time.
RowLock = Literal["update", "share"]
SERIAL_LOOKUP_CHUNK = 1000


@dataclass(frozen=True)
class Ordering:
    """An order_by the API accepted: a sort key and its direction (ties broken by id)."""

    key: str
    descending: bool = False


@dataclass(frozen=True)
class MeterFilters:
    site_id: str | None = None
    commodity: str | None = None
    state: str | None = None
    connectivity: Connectivity | None = None
    # (key, value) pairs; value None means "has the key".
    labels: tuple[tuple[str, str | None], ...] = ()
    query: str = ""
    show_decommissioned: bool = False


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _assigned(viewer: str) -> Select[str]:
    return select(MeterAssignee.meter_id).where(MeterAssignee.user_id == viewer)


def _keyset(
    query: Select[Any],
    sort: ColumnElement[Any],
    identifier: ColumnElement[str],
    ordering: Ordering,
    after: tuple[Any, str] | None,
) -> Select[Any]:
    """Keyset pagination: rows strictly after the last one returned, in a total order."""
    if after is not None:
        position = tuple_(sort, identifier)
        query = query.where(
            position < tuple_(*after) if ordering.descending else position > tuple_(*after)
        )
    if ordering.descending:
        return query.order_by(sort.desc(), identifier.desc())
    return query.order_by(sort, identifier)


# --- sites ------------------------------------------------------------------------------------

SITE_SORT_KEYS: dict[str, ColumnElement[Any]] = {
    "create_time": Site.create_time,  # type: ignore[dict-item]
    "name": Site.name,  # type: ignore[dict-item]
}


def _visible_sites(organization_id: str, viewer: str | None) -> Select[Site]:
    query = select(Site).where(Site.organization_id == organization_id, Site.delete_time.is_(None))
    if viewer is not None:
        query = query.where(
            exists().where(Meter.site_id == Site.id, Meter.id.in_(_assigned(viewer)))
        )
    return query


async def site_by_id(
    session: AsyncSession,
    organization_id: str,
    site_id: str,
    *,
    viewer: str | None = None,
    lock: RowLock | None = None,
) -> Site | None:
    query = _visible_sites(organization_id, viewer).where(Site.id == site_id)
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    return await session.scalar(query)


async def list_sites(
    session: AsyncSession,
    organization_id: str,
    *,
    viewer: str | None,
    query_text: str,
    ordering: Ordering,
    after: tuple[Any, str] | None,
    limit: int,
) -> list[Site]:
    query = _visible_sites(organization_id, viewer)
    if query_text:
        query = query.where(Site.name.ilike(_like(query_text), escape="\\"))
    query = _keyset(query, SITE_SORT_KEYS[ordering.key], Site.id, ordering, after)  # type: ignore[arg-type]
    return list((await session.scalars(query.limit(limit))).all())


async def site_ids(session: AsyncSession, organization_id: str, ids: Sequence[str]) -> set[str]:
    """Which of these ids are live sites of the organization, share-locked (meters are about
    to be added to them: a concurrent delete_site either waits or has already won)."""
    if not ids:
        return set()
    found = await session.scalars(
        select(Site.id)
        .where(
            Site.organization_id == organization_id,
            Site.delete_time.is_(None),
            Site.id.in_(ids),
        )
        .with_for_update(read=True)
    )
    return set(found.all())


async def site_has_meters_in_service(session: AsyncSession, site_id: str) -> bool:
    found = await session.scalar(
        select(Meter.id).where(Meter.site_id == site_id, Meter.state != DECOMMISSIONED).limit(1)
    )
    return found is not None


# --- meters -----------------------------------------------------------------------------------


def online(now: datetime) -> ColumnElement[bool]:
    """The SQL twin of validation.connectivity_of."""
    window = func.make_interval(0, 0, 0, 0, 0, 0, Meter.expected_interval_seconds * 2)
    return and_(Meter.last_seen_time.is_not(None), Meter.last_seen_time + window >= now)


METER_SORT_KEYS: dict[str, ColumnElement[Any]] = {
    "create_time": Meter.create_time,  # type: ignore[dict-item]
    "name": Meter.name,  # type: ignore[dict-item]
    "serial_number": Meter.serial_number,  # type: ignore[dict-item]
    # Never-seen meters sort as the oldest.
    "last_seen_time": func.coalesce(Meter.last_seen_time, EPOCH),
}


def _visible_meters(organization_id: str, viewer: str | None) -> Select[Meter]:
    query = select(Meter).where(Meter.organization_id == organization_id)
    if viewer is not None:
        query = query.where(Meter.id.in_(_assigned(viewer)))
    return query


async def meter_by_id(
    session: AsyncSession,
    organization_id: str,
    meter_id: str,
    *,
    viewer: str | None = None,
    lock: bool = False,
) -> Meter | None:
    query = _visible_meters(organization_id, viewer).where(Meter.id == meter_id)
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def meters_in_service_by_serial(
    session: AsyncSession, organization_id: str, serials: Sequence[str]
) -> dict[str, Meter]:
    """The organization's meters (not decommissioned) with these serial numbers, locked.

    Asked in chunks, each serial numbers as one array parameter: an IN list of 10,000 takes
    a second to render, and loading 10,000 meters at once holds the event loop as long."""
    meters: dict[str, Meter] = {}
    for start in range(0, len(serials), SERIAL_LOOKUP_CHUNK):
        chunk = list(serials[start : start + SERIAL_LOOKUP_CHUNK])
        found = await session.scalars(
            select(Meter)
            .where(
                Meter.organization_id == organization_id,
                Meter.state != DECOMMISSIONED,
                Meter.serial_number == any_(bindparam("serials", chunk, type_=ARRAY(String))),
            )
            .with_for_update()
        )
        meters.update((meter.serial_number, meter) for meter in found.all())
    return meters


async def list_meters(
    session: AsyncSession,
    organization_id: str,
    *,
    viewer: str | None,
    filters: MeterFilters,
    ordering: Ordering,
    after: tuple[Any, str] | None,
    limit: int,
    now: datetime,
) -> list[Meter]:
    query = _visible_meters(organization_id, viewer)
    if filters.site_id is not None:
        query = query.where(Meter.site_id == filters.site_id)
    if filters.commodity is not None:
        query = query.where(Meter.commodity == filters.commodity)
    if filters.state is not None:
        query = query.where(Meter.state == filters.state)
    elif not filters.show_decommissioned:
        query = query.where(Meter.state != DECOMMISSIONED)
    if filters.connectivity is Connectivity.ONLINE:
        query = query.where(online(now))
    elif filters.connectivity is Connectivity.OFFLINE:
        query = query.where(~online(now))
    for key, value in filters.labels:
        query = query.where(
            Meter.labels.has_key(key) if value is None else Meter.labels.contains({key: value})
        )
    if filters.query:
        pattern = _like(filters.query)
        query = query.where(
            or_(
                Meter.name.ilike(pattern, escape="\\"),
                Meter.serial_number.ilike(pattern, escape="\\"),
            )
        )
    query = _keyset(query, METER_SORT_KEYS[ordering.key], Meter.id, ordering, after)  # type: ignore[arg-type]
    return list((await session.scalars(query.limit(limit))).all())


async def meter_ids_in_service(
    session: AsyncSession, organization_id: str, site_id: str | None
) -> list[str]:
    query = select(Meter.id).where(
        Meter.organization_id == organization_id, Meter.state != DECOMMISSIONED
    )
    if site_id is not None:
        query = query.where(Meter.site_id == site_id)
    return list((await session.scalars(query.order_by(Meter.id))).all())


async def record_seen(
    session: AsyncSession, organization_id: str, meter_id: str, seen: datetime
) -> Meter | None:
    """Moves last_seen_time forward to `seen` (never back); the meter, locked, or None."""
    meter = await session.scalar(
        select(Meter)
        .where(Meter.id == meter_id, Meter.organization_id == organization_id)
        .with_for_update()
    )
    if meter is not None and (meter.last_seen_time is None or meter.last_seen_time < seen):
        meter.last_seen_time = seen
    return meter


async def connectivity_changes(session: AsyncSession, now: datetime, limit: int) -> list[Meter]:
    """Meters whose computed connectivity differs from the one last announced, locked (rows
    another replica is handling are skipped)."""
    is_online = online(now)
    query = (
        select(Meter)
        .where(
            Meter.state != DECOMMISSIONED,
            or_(
                and_(Meter.announced_connectivity == Connectivity.ONLINE.value, ~is_online),
                and_(Meter.announced_connectivity == Connectivity.OFFLINE.value, is_online),
            ),
        )
        .order_by(Meter.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(query)).all())


async def next_offline_time(session: AsyncSession) -> datetime | None:
    """When the next meter announced ONLINE goes OFFLINE if nothing arrives."""
    window = func.make_interval(0, 0, 0, 0, 0, 0, Meter.expected_interval_seconds * 2)
    deadline: datetime | None = await session.scalar(
        select(func.min(Meter.last_seen_time + window)).where(
            Meter.state != DECOMMISSIONED,
            Meter.announced_connectivity == Connectivity.ONLINE.value,
        )
    )
    return deadline


# --- credentials ------------------------------------------------------------------------------


async def live_meter_tokens(
    session: AsyncSession, meter_id: str, now: datetime
) -> list[MeterToken]:
    """A meter's tokens that still work: neither revoked nor expired."""
    query = (
        select(MeterToken)
        .where(
            MeterToken.meter_id == meter_id,
            MeterToken.revoke_time.is_(None),
            or_(MeterToken.expire_time.is_(None), MeterToken.expire_time > now),
        )
        .order_by(MeterToken.create_time, MeterToken.id)
    )
    return list((await session.scalars(query)).all())


async def meter_token(
    session: AsyncSession, meter_id: str, token_id: str, *, lock: bool = False
) -> MeterToken | None:
    query = select(MeterToken).where(
        MeterToken.id == token_id,
        MeterToken.meter_id == meter_id,
        MeterToken.revoke_time.is_(None),
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def meter_token_by_prefix(session: AsyncSession, prefix: str) -> MeterToken | None:
    return await session.scalar(select(MeterToken).where(MeterToken.prefix == prefix))


async def revoke_meter_tokens(
    session: AsyncSession, meter_id: str, now: datetime
) -> list[MeterToken]:
    """Revokes a meter's live tokens; returns them."""
    revoked = await session.scalars(
        update(MeterToken)
        .where(MeterToken.meter_id == meter_id, MeterToken.revoke_time.is_(None))
        .values(revoke_time=now)
        .returning(MeterToken)
    )
    return list(revoked.all())


async def live_ingest_keys(
    session: AsyncSession, organization_id: str, now: datetime
) -> list[IngestKey]:
    """An organization's ingest keys that still work: neither revoked nor expired."""
    query = (
        select(IngestKey)
        .where(
            IngestKey.organization_id == organization_id,
            IngestKey.revoke_time.is_(None),
            or_(IngestKey.expire_time.is_(None), IngestKey.expire_time > now),
        )
        .order_by(IngestKey.create_time, IngestKey.id)
    )
    return list((await session.scalars(query)).all())


async def ingest_key(
    session: AsyncSession, organization_id: str, key_id: str, *, lock: bool = False
) -> IngestKey | None:
    query = select(IngestKey).where(
        IngestKey.id == key_id,
        IngestKey.organization_id == organization_id,
        IngestKey.revoke_time.is_(None),
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def ingest_key_by_prefix(session: AsyncSession, prefix: str) -> IngestKey | None:
    return await session.scalar(select(IngestKey).where(IngestKey.prefix == prefix))


async def revoke_site_ingest_keys(
    session: AsyncSession, site_id: str, now: datetime
) -> list[IngestKey]:
    revoked = await session.scalars(
        update(IngestKey)
        .where(IngestKey.site_id == site_id, IngestKey.revoke_time.is_(None))
        .values(revoke_time=now)
        .returning(IngestKey)
    )
    return list(revoked.all())


# --- assignments ------------------------------------------------------------------------------


async def assignee(session: AsyncSession, meter_id: str, user_id: str) -> MeterAssignee | None:
    return await session.scalar(
        select(MeterAssignee).where(
            MeterAssignee.meter_id == meter_id, MeterAssignee.user_id == user_id
        )
    )


async def assignees(session: AsyncSession, meter_id: str) -> list[MeterAssignee]:
    query = (
        select(MeterAssignee)
        .where(MeterAssignee.meter_id == meter_id)
        .order_by(MeterAssignee.create_time, MeterAssignee.user_id)
    )
    return list((await session.scalars(query)).all())
