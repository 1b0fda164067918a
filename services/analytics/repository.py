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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Select,
    and_,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.ext.asyncio import AsyncSession

from energymesh.devices.v1 import devices_pb2
from services.analytics.models import AnomalyRow, MeterInfo, Rollup, SiteInfo, SiteRollup
from services.analytics.rollups import Bucket, Columns, Reading
from services.analytics.rows import to_datetime, to_ms
from services.kernel import pgcopy

EXPORT = devices_pb2.FLOW_DIRECTION_EXPORT


async def lock_meter(session: AsyncSession, meter_id: str) -> None:
    """Serialises recomputations of one meter's rollups (replicas share the consumer)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('analytics.rollups:' || :meter_id))"),
        {"meter_id": meter_id},
    )


async def lock_meters(session: AsyncSession, meter_ids: Sequence[str]) -> None:
    """lock_meter for many meters, in one order (no two batches deadlock)."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtext('analytics.rollups:' || id)) "
            "FROM (SELECT unnest(CAST(:ids AS text[])) AS id ORDER BY 1) AS ordered"
        ),
        {"ids": sorted(meter_ids)},
    )


async def lock_site(session: AsyncSession, site_id: str) -> None:
    """Serialises changes of one site's time zone (and the rebuilds they start)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('analytics.sites:' || :site_id))"),
        {"site_id": site_id},
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
    if rows:
        await session.execute(_UPSERT_ROLLUPS, list(rows))


def _upsert_rollups() -> Any:
    statement = insert(Rollup)
    keys = ("meter_id", "granularity", "bucket_start")
    return statement.on_conflict_do_update(
        constraint="rollups_pkey",
        set_={
            column.key: statement.excluded[column.key]
            for column in Rollup.__table__.columns
            if column.key not in keys
        },
    )


# One statement, executed with many rows (SQLAlchemy batches them into multi-row VALUES).
_UPSERT_ROLLUPS = _upsert_rollups()


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


async def rollups_between(
    session: AsyncSession,
    meter_id: str,
    granularities: Sequence[str],
    start: datetime,
    end: datetime,
) -> list[Rollup]:
    """The meter's stored buckets of the given granularities starting in [start, end)."""
    result = await session.scalars(
        select(Rollup).where(
            Rollup.meter_id == meter_id,
            Rollup.granularity.in_(granularities),
            Rollup.bucket_start >= start,
            Rollup.bucket_start < end,
        )
    )
    return list(result)


async def all_rollups(session: AsyncSession, meter_id: str) -> list[Rollup]:
    return list(await session.scalars(select(Rollup).where(Rollup.meter_id == meter_id)))


async def delete_rollups(session: AsyncSession, meter_ids: Sequence[str]) -> None:
    await session.execute(delete(Rollup).where(Rollup.meter_id.in_(meter_ids)))


async def delete_site_rollups(session: AsyncSession, site_id: str) -> None:
    await session.execute(delete(SiteRollup).where(SiteRollup.site_id == site_id))


async def meters_of_site(session: AsyncSession, site_id: str) -> list[MeterInfo]:
    return await meters_of_sites(session, [site_id])


async def meters_of_sites(session: AsyncSession, site_ids: Sequence[str]) -> list[MeterInfo]:
    result = await session.scalars(
        select(MeterInfo).where(MeterInfo.site_id.in_(site_ids)).order_by(MeterInfo.id)
    )
    return list(result)


async def lock_meter_info(session: AsyncSession, meter_id: str) -> MeterInfo | None:
    """The meter's row, locked for update (with the meter's rollup lock already held)."""
    result = await session.scalars(
        select(MeterInfo).where(MeterInfo.id == meter_id).with_for_update()
    )
    return result.one_or_none()


async def rebuilding_meters(session: AsyncSession) -> list[str]:
    result = await session.scalars(
        select(MeterInfo.id).where(MeterInfo.rebuilt_until.is_not(None)).order_by(MeterInfo.id)
    )
    return list(result)


async def reading_span(
    session: AsyncSession, meter_id: str, since: datetime
) -> tuple[int, int] | None:
    """Times (ms) of the meter's first and last readings at or after `since`."""
    row = (
        await session.execute(
            text(
                "SELECT (extract(epoch from min(time)) * 1000)::bigint, "
                "(extract(epoch from max(time)) * 1000)::bigint FROM telemetry.readings "
                "WHERE meter_id = :meter_id AND time >= :since"
            ),
            {"meter_id": meter_id, "since": since},
        )
    ).one()
    if row[0] is None:
        return None
    return int(row[0]), int(row[1])


# Per window (meter, lo, hi): its stored hours, as packed big-endian columns.
PACKED_HOURS = """
    SELECT w.position,
        string_agg(timestamptz_send(r.bucket_start), ''::bytea),
        string_agg(float8send(r.value), ''::bytea),
        string_agg(float8send(r.completeness), ''::bytea)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]))
        WITH ORDINALITY AS w(meter_id, lo, hi, position)
    JOIN analytics.rollups r ON r.meter_id = w.meter_id AND r.granularity = 'HOUR'
        AND r.bucket_start >= w.lo AND r.bucket_start < w.hi
    GROUP BY w.position
"""
Arrays = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


async def driver_connection(session: AsyncSession) -> psycopg.AsyncConnection[object]:
    """The session's psycopg connection, for COPY."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: psycopg.AsyncConnection[object] = raw.driver_connection  # type: ignore[assignment]
    return driver


async def packed_windows(
    session: AsyncSession,
    query: str,
    windows: Sequence[tuple[str, int, int]],
    dtypes: Sequence[str],
) -> list[list[npt.NDArray[Any]]]:
    """Runs a query over windows (meter, lo, hi), given to it as :ids, :los and :his arrays
    (unnest … WITH ORDINALITY: each result row starts with the window's 1-based position),
    whose other columns are packed binary arrays (string_agg of float8send, …), the first of
    them a time: per window, those columns decoded by numpy with dtypes, in time order. No
    Python object per value."""
    rows = await session.execute(
        text(query),
        {
            "ids": [meter_id for meter_id, _, _ in windows],
            "los": [to_datetime(lo) for _, lo, _ in windows],
            "his": [to_datetime(hi) for _, _, hi in windows],
        },
    )
    found = {int(row[0]): row[1:] for row in rows}
    result = []
    for i in range(len(windows)):
        packed = found.get(i + 1, [None] * len(dtypes))
        columns = [np.frombuffer(p or b"", dtype=d) for p, d in zip(packed, dtypes, strict=True)]
        # Aggregated without ORDER BY (no sort in PostgreSQL): in time order from here.
        order = np.argsort(columns[0], kind="stable")
        result.append([column[order] for column in columns])
    return result


async def hourly_histories(
    session: AsyncSession, windows: Sequence[tuple[str, int, int]]
) -> list[Arrays]:
    """Per (meter, lo, hi): the starts (ms), values and completeness of its stored hours in
    [lo, hi), in time order."""
    return [
        (
            pgcopy.from_timestamptz(starts),
            values.astype(np.float64),
            completeness.astype(np.float64),
        )
        for starts, values, completeness in await packed_windows(
            session, PACKED_HOURS, windows, (pgcopy.TIMESTAMPTZ, pgcopy.FLOAT8, pgcopy.FLOAT8)
        )
    ]


async def anomalies_in(
    session: AsyncSession, windows: Sequence[tuple[str, int, int]]
) -> dict[str, dict[int, AnomalyRow]]:
    """Per meter, its stored anomalies starting in [lo, hi) of its window, by start (ms)."""
    rows = await session.scalars(
        select(AnomalyRow).from_statement(
            text(
                "SELECT a.* FROM unnest(CAST(:ids AS uuid[]), CAST(:los AS timestamptz[]), "
                "CAST(:his AS timestamptz[])) AS w(meter_id, lo, hi) "
                "JOIN analytics.anomalies a ON a.meter_id = w.meter_id "
                "AND a.start_time >= w.lo AND a.start_time < w.hi"
            )
        ),
        {
            "ids": [meter_id for meter_id, _, _ in windows],
            "los": [to_datetime(lo) for _, lo, _ in windows],
            "his": [to_datetime(hi) for _, _, hi in windows],
        },
    )
    found: dict[str, dict[int, AnomalyRow]] = {}
    for row in rows:
        found.setdefault(str(row.meter_id), {})[to_ms(row.start_time)] = row
    return found


async def delete_anomalies(session: AsyncSession, ids: Sequence[str]) -> None:
    if ids:
        await session.execute(delete(AnomalyRow).where(AnomalyRow.id.in_(ids)))


async def delete_meter(session: AsyncSession, meter_id: str) -> None:
    """Everything analytics keeps about a meter (it was purged)."""
    await session.execute(delete(AnomalyRow).where(AnomalyRow.meter_id == meter_id))
    await session.execute(delete(Rollup).where(Rollup.meter_id == meter_id))
    await session.execute(delete(MeterInfo).where(MeterInfo.id == meter_id))


# --- queries of the consumption API ----------------------------------------------------------


@dataclass(frozen=True)
class SeriesKey:
    """What one series sums: a commodity and direction (devices.v1 numbers) in one unit."""

    commodity: int
    direction: int
    unit: str


_SITE = SiteRollup.__table__.c
_METER = Rollup.__table__.c
_METER_INFO = MeterInfo.__table__.c
_LENGTH_MS = cast(func.extract("epoch", _METER.bucket_end - _METER.bucket_start) * 1000, Float)


def _pieces(columns: Any, pieces: Sequence[tuple[str, datetime, datetime]]) -> ColumnElement[bool]:
    """Rows of the given (granularity, first bucket start, end) runs."""
    return or_(
        *(
            and_(
                columns.granularity == granularity,
                columns.bucket_start >= start,
                columns.bucket_start < end,
            )
            for granularity, start, end in pieces
        )
    )


def _bucket(row: Any, start_ms: int, end_ms: int) -> Bucket:
    """A Bucket from a grouped row (_sums)."""
    return Bucket(
        start_ms=start_ms,
        end_ms=end_ms,
        value=float(row.value),
        covered_ms=int(row.covered_ms),
        readings=int(row.reading_count),
        resets=int(row.reset_count),
        rollovers=int(row.rollover_count),
        peak_demand=float(row.peak_demand),
        peak_time_ms=int(row.peak_time),
        cost=float(row.cost) if row.priced_rows else None,
        co2_kg=float(row.co2_kg) if row.co2_rows else None,
        span_ms=int(row.span_ms),
    )


def _sums(columns: Any, span: Any, priced: Any, co2_rows: Any) -> list[Any]:
    return [
        func.sum(columns.value).label("value"),
        # Sums as float8 (exact for these sizes): a bigint sum is numeric, slow to add up.
        func.sum(cast(columns.covered_ms, Float)).label("covered_ms"),
        span.label("span_ms"),
        func.sum(columns.reading_count).label("reading_count"),
        func.sum(columns.reset_count).label("reset_count"),
        func.sum(columns.rollover_count).label("rollover_count"),
        func.coalesce(func.sum(columns.cost), 0.0).label("cost"),
        priced.label("priced_rows"),
        func.coalesce(func.sum(columns.co2_kg), 0.0).label("co2_kg"),
        co2_rows.label("co2_rows"),
        func.max(columns.currency).label("currency"),
        func.min(columns.currency).label("other_currency"),
        func.max(columns.peak_demand).label("peak_demand"),
        _epoch_ms(aggregate_order_by_first(columns.peak_time, columns.peak_demand)).label(
            "peak_time"
        ),
    ]


def aggregate_order_by_first(value: Any, by: Any) -> Any:
    """The value of the row with the highest `by` in a group."""
    return func.array_agg(aggregate_order_by(value, by.desc()))[1]


def _bounds(columns: Any) -> list[Any]:
    return [
        _epoch_ms(columns.bucket_start).label("start_ms"),
        _epoch_ms(columns.bucket_end).label("end_ms"),
    ]


def _site_sums() -> list[Any]:
    return _sums(
        _SITE,
        func.sum(cast(_SITE.span_ms, Float)),
        func.sum(_SITE.priced_rows),
        func.sum(_SITE.co2_rows),
    )


def _meter_sums() -> list[Any]:
    return _sums(
        _METER,
        func.sum(_LENGTH_MS),
        func.count(_METER.cost),
        func.count(_METER.co2_kg),
    )


@dataclass(frozen=True)
class Sources:
    """What a query sums: whole sites (their stored site sums), or single meters (a viewer's
    meters, read one by one)."""

    site_ids: Sequence[str] = ()
    meter_ids: Sequence[str] = ()


# The columns of a grouped query, packed per series (string_agg of their binary send form):
# no Python object per value on the way. (label, send function, numpy dtype)
_PACKED = (
    ("start_ms", "int8send", pgcopy.INT8),
    ("end_ms", "int8send", pgcopy.INT8),
    ("value", "float8send", pgcopy.FLOAT8),
    ("covered_ms", "float8send", pgcopy.FLOAT8),
    ("span_ms", "float8send", pgcopy.FLOAT8),
    ("reading_count", "int8send", pgcopy.INT8),
    ("reset_count", "int8send", pgcopy.INT8),
    ("rollover_count", "int8send", pgcopy.INT8),
    ("cost", "float8send", pgcopy.FLOAT8),
    ("priced_rows", "int8send", pgcopy.INT8),
    ("co2_kg", "float8send", pgcopy.FLOAT8),
    ("co2_rows", "int8send", pgcopy.INT8),
    ("peak_demand", "float8send", pgcopy.FLOAT8),
    ("peak_time", "int8send", pgcopy.INT8),
)


async def grouped_buckets(
    session: AsyncSession,
    sources: Sources,
    granularity: str,
    start: datetime,
    end: datetime,
    commodity: int = 0,
) -> dict[SeriesKey, tuple[list[Bucket], set[str]]]:
    """The sources' stored buckets of one granularity starting in [start, end), summed per
    series and bucket (in time order), with the currencies of their costs."""
    result: dict[SeriesKey, tuple[list[Bucket], set[str]]] = {}
    for statement in _grouped_statements(sources, granularity, start, end, commodity):
        inner = statement.subquery()
        packed = select(
            inner.c.commodity,
            inner.c.direction,
            inner.c.unit,
            *(
                func.string_agg(
                    getattr(func, send)(
                        cast(inner.c[name], BigInteger if send == "int8send" else Float)
                    ),
                    literal(b""),
                )
                for name, send, _ in _PACKED
            ),
            func.max(inner.c.currency),
            func.min(inner.c.other_currency),
        ).group_by(inner.c.commodity, inner.c.direction, inner.c.unit)
        for row in await session.execute(packed):
            key = SeriesKey(int(row[0]), int(row[1]), str(row[2]))
            columns = {
                name: np.frombuffer(data, dtype=dtype)
                for (name, _, dtype), data in zip(_PACKED, row[3:-2], strict=True)
            }
            buckets, currencies = result.setdefault(key, ([], set()))
            buckets.extend(_buckets_of(columns))
            highest, lowest = row[-2], row[-1]
            currencies.update(c for c in (highest, lowest) if c)
    for buckets, _ in result.values():
        buckets.sort(key=lambda bucket: bucket.start_ms)
    return result


def _buckets_of(columns: dict[str, npt.NDArray[Any]]) -> list[Bucket]:
    """Buckets from packed columns (_PACKED), built through lists (faster than indexing)."""

    def known(name: str, rows: str) -> list[float | None]:
        values, counts = columns[name].tolist(), columns[rows].tolist()
        return [v if n else None for v, n in zip(values, counts, strict=True)]

    return [
        Bucket(*row)  # the fields' order: start_ms, end_ms, …, cost, co2_kg, span_ms
        for row in zip(
            columns["start_ms"].tolist(),
            columns["end_ms"].tolist(),
            columns["value"].tolist(),
            columns["covered_ms"].astype(np.int64).tolist(),
            columns["reading_count"].tolist(),
            columns["reset_count"].tolist(),
            columns["rollover_count"].tolist(),
            columns["peak_demand"].tolist(),
            columns["peak_time"].tolist(),
            known("cost", "priced_rows"),
            known("co2_kg", "co2_rows"),
            columns["span_ms"].astype(np.int64).tolist(),
            strict=True,
        )
    ]


def _grouped_statements(
    sources: Sources, granularity: str, start: datetime, end: datetime, commodity: int
) -> list[Select[Any]]:
    statements = []
    if sources.site_ids:
        # Time first: sorting for the grouping then rarely compares the unit (text).
        keys = [_SITE.bucket_start, _SITE.bucket_end, _SITE.commodity, _SITE.direction, _SITE.unit]
        query = (
            select(*keys, *_bounds(_SITE), *_site_sums())
            .where(
                _SITE.site_id.in_(sources.site_ids),
                _SITE.granularity == granularity,
                _SITE.bucket_start >= start,
                _SITE.bucket_start < end,
            )
            .group_by(*keys)
        )
        if commodity:
            query = query.where(_SITE.commodity == commodity)
        statements.append(query)
    if sources.meter_ids:
        keys = [
            _METER.bucket_start,
            _METER.bucket_end,
            _METER_INFO.commodity,
            _METER_INFO.direction,
            _METER.unit,
        ]
        query = (
            select(*keys, *_bounds(_METER), *_meter_sums())
            .join_from(Rollup, MeterInfo, MeterInfo.id == Rollup.meter_id)
            .where(
                _METER.meter_id.in_(sources.meter_ids),
                _METER.granularity == granularity,
                _METER.bucket_start >= start,
                _METER.bucket_start < end,
            )
            .group_by(*keys)
        )
        if commodity:
            query = query.where(_METER_INFO.commodity == commodity)
        statements.append(query)
    return statements


@dataclass(frozen=True)
class Total:
    """A source's (site's or meter's) sums over a range of one series."""

    source_id: str
    site_id: str
    key: SeriesKey
    bucket: Bucket
    currencies: frozenset[str]


async def totals(
    session: AsyncSession,
    sources: Sources,
    pieces: Sequence[tuple[str, datetime, datetime]],
    *,
    per_meter: bool = False,
    commodity: int = 0,
    imports_only: bool = False,
) -> list[Total]:
    """Sums over the rows of `pieces` (rollups.cover runs), per site and series, or with
    per_meter per meter and series. The bucket of a Total spans the whole range."""
    if not pieces:
        return []
    lo, hi = min(piece[1] for piece in pieces), max(piece[2] for piece in pieces)
    found: list[Total] = []
    if sources.site_ids:
        keys = [_SITE.site_id, _SITE.commodity, _SITE.direction, _SITE.unit]
        query = (
            select(*keys, *_site_sums())
            .where(_SITE.site_id.in_(sources.site_ids), _pieces(_SITE, pieces))
            .group_by(*keys)
        )
        if commodity:
            query = query.where(_SITE.commodity == commodity)
        if imports_only:
            query = query.where(_SITE.direction != EXPORT)
        for row in await session.execute(query):
            found.append(_total(row, str(row.site_id), str(row.site_id), lo, hi))
    if sources.meter_ids:
        keys = [
            _METER.meter_id,
            _METER_INFO.site_id,
            _METER_INFO.commodity,
            _METER_INFO.direction,
            _METER.unit,
        ]
        group = keys if per_meter else keys[1:]
        query = (
            select(*group, *_meter_sums())
            .join_from(Rollup, MeterInfo, MeterInfo.id == Rollup.meter_id)
            .where(_METER.meter_id.in_(sources.meter_ids), _pieces(_METER, pieces))
            .group_by(*group)
        )
        if commodity:
            query = query.where(_METER_INFO.commodity == commodity)
        if imports_only:
            query = query.where(_METER_INFO.direction != EXPORT)
        for row in await session.execute(query):
            source = str(row.meter_id) if per_meter else str(row.site_id)
            found.append(_total(row, source, str(row.site_id), lo, hi))
    return found


def _total(row: Any, source_id: str, site_id: str, lo: datetime, hi: datetime) -> Total:
    currencies = {row.currency} if row.currency else set()
    if row.other_currency != row.currency:
        currencies.add("")
    return Total(
        source_id=source_id,
        site_id=site_id,
        key=SeriesKey(int(row.commodity), int(row.direction), str(row.unit)),
        bucket=_bucket(row, to_ms(lo), to_ms(hi)),
        currencies=frozenset(currencies),
    )


def _epoch_ms(column: Any) -> Any:
    return cast(func.extract("epoch", column) * 1000, BigInteger)


# A meter's buckets of one granularity in [start, end), as packed big-endian columns (one row:
# no Python object per value on the way).
PACKED_BUCKETS = text(
    """
    SELECT string_agg(timestamptz_send(bucket_start), ''::bytea),
        string_agg(timestamptz_send(bucket_end), ''::bytea),
        string_agg(float8send(value), ''::bytea),
        string_agg(int8send(covered_ms), ''::bytea),
        string_agg(int4send(reading_count), ''::bytea),
        string_agg(int4send(reset_count), ''::bytea),
        string_agg(int4send(rollover_count), ''::bytea),
        string_agg(float8send(peak_demand), ''::bytea),
        string_agg(timestamptz_send(peak_time), ''::bytea),
        string_agg(float8send(coalesce(cost, 'NaN')), ''::bytea),
        string_agg(float8send(coalesce(co2_kg, 'NaN')), ''::bytea),
        max(currency)
    FROM analytics.rollups
    WHERE meter_id = :meter_id AND granularity = :granularity
      AND bucket_start >= :start AND bucket_start < :end
    """
)


async def meter_buckets(
    session: AsyncSession, meter_id: str, granularity: str, start: datetime, end: datetime
) -> tuple[list[Bucket], str]:
    """A meter's stored buckets starting in [start, end), in time order, and the currency of
    their cost ("" when unpriced)."""
    row = (
        await session.execute(
            PACKED_BUCKETS,
            {"meter_id": meter_id, "granularity": granularity, "start": start, "end": end},
        )
    ).one()
    if row[0] is None:
        return [], ""

    def column(index: int, dtype: str) -> npt.NDArray[Any]:
        return np.frombuffer(row[index], dtype=dtype)

    times, order = column(0, pgcopy.TIMESTAMPTZ), None
    order = np.argsort(times, kind="stable")
    columns = Columns(
        start=pgcopy.from_timestamptz(times),
        end=pgcopy.from_timestamptz(column(1, pgcopy.TIMESTAMPTZ)),
        value=column(2, pgcopy.FLOAT8).astype(np.float64),
        covered=column(3, pgcopy.INT8).astype(np.int64),
        readings=column(4, pgcopy.INT4).astype(np.int64),
        resets=column(5, pgcopy.INT4).astype(np.int64),
        rollovers=column(6, pgcopy.INT4).astype(np.int64),
        peak_demand=column(7, pgcopy.FLOAT8).astype(np.float64),
        peak_time=pgcopy.from_timestamptz(column(8, pgcopy.TIMESTAMPTZ)),
        cost=column(9, pgcopy.FLOAT8).astype(np.float64),
        co2_kg=column(10, pgcopy.FLOAT8).astype(np.float64),
    )
    return columns.take(order).buckets(), row[11] or ""


async def sites_of_organization(session: AsyncSession, organization_id: str) -> list[SiteInfo]:
    result = await session.scalars(
        select(SiteInfo).where(SiteInfo.organization_id == organization_id).order_by(SiteInfo.id)
    )
    return list(result)


async def meter_infos(session: AsyncSession, meter_ids: Sequence[str]) -> list[MeterInfo]:
    result = await session.scalars(
        select(MeterInfo).where(MeterInfo.id.in_(meter_ids)).order_by(MeterInfo.id)
    )
    return list(result)


async def sites(session: AsyncSession, site_ids: Sequence[str]) -> list[SiteInfo]:
    result = await session.scalars(select(SiteInfo).where(SiteInfo.id.in_(site_ids)))
    return list(result)


async def last_hour_with_readings(session: AsyncSession, meter_id: str) -> datetime | None:
    return await session.scalar(
        select(func.max(Rollup.bucket_start)).where(
            Rollup.meter_id == meter_id,
            Rollup.granularity == "HOUR",
            Rollup.reading_count > 0,
        )
    )


async def list_anomalies(
    session: AsyncSession,
    organization_id: str,
    *,
    meter_ids: Sequence[str] | None,
    site_id: str | None,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[AnomalyRow]:
    """Anomalies newest first (start_time, then id, descending), after a keyset position."""
    query = select(AnomalyRow).where(AnomalyRow.organization_id == organization_id)
    if meter_ids is not None:
        query = query.where(AnomalyRow.meter_id.in_(meter_ids))
    if site_id is not None:
        query = query.where(AnomalyRow.site_id == site_id)
    if start is not None:
        query = query.where(AnomalyRow.start_time >= start)
    if end is not None:
        query = query.where(AnomalyRow.start_time < end)
    if after is not None:
        query = query.where(tuple_(AnomalyRow.start_time, AnomalyRow.id) < after)
    query = query.order_by(AnomalyRow.start_time.desc(), AnomalyRow.id.desc()).limit(limit)
    return list(await session.scalars(query))
