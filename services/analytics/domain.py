"""The analytics queries: consumption series of meters, sites and the organization, site
summaries, top consumers, forecasts, anomalies and the CSV export, all answered from the
rollups (services/analytics/maintenance.py keeps them up to date).

Who sees what: managers, operators and admins see the whole organization, read from the
stored site sums (services/analytics/aggregates.py); a viewer sees only the meters assigned to
them (the registry's ListMeters/GetMeter on their behalf), read meter by meter. Another
organization's meter or site is NOT_FOUND (the registry's answer).

Buckets are the site's local ones. A query in another zone sums finer stored buckets: hours
when both zones are whole hours apart, else quarter hours.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from energymesh.devices.v1 import devices_pb2
from services.analytics import repository
from services.analytics.forecast import backtest, forecast
from services.analytics.models import AnomalyRow, SiteInfo
from services.analytics.repository import SeriesKey, Sources, Total
from services.analytics.rollups import (
    COMPLETE_HOUR,
    MS_PER_HOUR,
    QUARTER_HOUR_MS,
    Bucket,
    Granularity,
    UnknownUnitError,
    aggregate,
    aligned_range,
    cover,
    merge,
    net,
    normalise_unit,
)
from services.analytics.rows import to_datetime, to_ms
from services.kernel.context import Caller, Role
from services.kernel.database import Database
from services.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Violations,
    is_uuid,
)
from services.kernel.pagination import decode_token, encode_token, page_size
from services.kernel.registry import DeviceRegistry

EXPORT = devices_pb2.FLOW_DIRECTION_EXPORT
# Granularities stored; WEEK is summed from DAY at query time.
STORED = (Granularity.QUARTER_HOUR, Granularity.HOUR, Granularity.DAY, Granularity.MONTH)
# Most buckets one query (one meter of an export) may return.
MAX_POINTS = 50_000
_MIN_BUCKET_MS = {
    Granularity.QUARTER_HOUR: QUARTER_HOUR_MS,
    Granularity.HOUR: MS_PER_HOUR,
    Granularity.DAY: 23 * MS_PER_HOUR,
    Granularity.WEEK: 7 * 23 * MS_PER_HOUR,
    Granularity.MONTH: 28 * 23 * MS_PER_HOUR,
}
# Summaries and top lists: at most this long a period.
MAX_PERIOD_MS = 10 * 366 * 24 * MS_PER_HOUR
BASELOAD_PERCENTILE = 5.0
FORECAST_HISTORY_WEEKS = 4
BACKTEST_DAYS = 14
_WEEK_MS = 7 * 24 * MS_PER_HOUR
MAX_FORECAST_HOURS = 720
DEFAULT_FORECAST_HOURS = 168
MAX_TOP = 100
DEFAULT_TOP = 10
EXPORT_CHUNK_BYTES = 1 << 20
EXPORT_COLUMNS = (
    "meter_id",
    "site_id",
    "start_time",
    "end_time",
    "value",
    "unit",
    "cost",
    "currency",
    "co2_kg",
    "completeness",
)


@dataclass(frozen=True)
class Window:
    """A validated query range: [start_ms, end_ms) at a granularity, in `zone` if given (a
    time-zone override), else in each source's own zone."""

    start_ms: int
    end_ms: int
    granularity: Granularity
    zone: ZoneInfo | None


@dataclass(frozen=True)
class Series:
    """Buckets of one commodity and direction (0 when netted) in one unit."""

    commodity: int
    direction: int
    unit: str
    buckets: Sequence[Bucket]
    # ISO 4217 code of the buckets' cost; "" when unpriced.
    currency: str = ""


@dataclass(frozen=True)
class CommoditySummary:
    commodity: int
    unit: str
    total: float
    exported: float
    peak_demand: float
    peak_time_ms: int
    baseload: float
    cost: float | None
    currency: str
    co2_kg: float | None
    previous_total: float
    change: float | None
    completeness: float


@dataclass(frozen=True)
class TopEntry:
    meter_id: str
    site_id: str
    commodity: int
    total: float
    unit: str


@dataclass(frozen=True)
class MeterForecast:
    meter_id: str
    unit: str
    starts_ms: list[int]
    values: list[float]
    lower: list[float]
    upper: list[float]
    backtest_mape: float
    naive_mape: float
    backtest_hours: int
    history_hours: int


@dataclass(frozen=True)
class AnomalyPage:
    anomalies: list[AnomalyRow]
    next_page_token: str


def parse_zone(violations: Violations, field: str, name: str) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        violations.add(field, "must be an IANA time zone")
        return None


def check_id(violations: Violations, field: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            violations.add(field, "is required")
        return
    violations.check(is_uuid(value), field, "must be an id (UUID)")


def check_period(
    violations: Violations, start: datetime | None, end: datetime | None, *, required: bool = True
) -> None:
    if required:
        violations.check(start is not None, "start_time", "is required")
        violations.check(end is not None, "end_time", "is required")
    if start is not None and end is not None:
        violations.check(start < end, "end_time", "must be after start_time")
        if start < end:
            violations.check(
                to_ms(end) - to_ms(start) <= MAX_PERIOD_MS,
                "end_time",
                "the period is longer than ten years",
            )


def check_window(
    violations: Violations,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity | None,
    time_zone: str,
) -> Window:
    """Validates a consumption query's range; raises InvalidArgument with every violation."""
    check_period(violations, start, end)
    violations.check(granularity is not None, "granularity", "is required")
    zone = parse_zone(violations, "time_zone", time_zone)
    violations.raise_if_any()
    assert start is not None
    assert end is not None
    assert granularity is not None
    start_ms, end_ms = to_ms(start), to_ms(end)
    if (end_ms - start_ms) // _MIN_BUCKET_MS[granularity] > MAX_POINTS:
        violations.add("end_time", f"the range holds more than {MAX_POINTS} buckets")
        violations.raise_if_any()
    return Window(start_ms, end_ms, granularity, zone)


def canonical_unit(unit: str) -> str:
    try:
        return normalise_unit(unit).canonical
    except UnknownUnitError as error:
        raise FailedPrecondition(str(error)) from error


def _whole_hours_apart(a: ZoneInfo, b: ZoneInfo, lo_ms: int, hi_ms: int) -> bool:
    """Whether the two zones' offsets differ by whole hours over [lo_ms, hi_ms) (sampled at
    its ends and monthly: zones keep their minutes offset the whole year but Lord Howe)."""
    step = 30 * 24 * MS_PER_HOUR
    for t in [*range(lo_ms, hi_ms, step), hi_ms - 1]:
        moment = datetime.fromtimestamp(t / 1000, UTC)
        offset_a, offset_b = a.utcoffset(moment), b.utcoffset(moment)
        assert offset_a is not None
        assert offset_b is not None
        if (offset_a - offset_b) % timedelta(hours=1):
            return False
    return True


def _single_currency(currencies: Iterable[str]) -> str | None:
    """The one currency of a series' costs; None when they mix currencies (no sum then)."""
    found = set(currencies)
    if "" in found or len(found) > 1:
        return None
    return next(iter(found), "")


def _without_costs(buckets: Sequence[Bucket]) -> list[Bucket]:
    return [replace(bucket, cost=None) for bucket in buckets]


def _series(
    key: SeriesKey, buckets: Sequence[Bucket], currencies: Iterable[str], direction: int | None
) -> Series:
    currency = _single_currency(currencies)
    if currency is None:
        buckets, currency = _without_costs(buckets), ""
    return Series(
        commodity=key.commodity,
        direction=key.direction if direction is None else direction,
        unit=key.unit,
        buckets=buckets,
        currency=currency,
    )


def _netted(
    per_key: dict[SeriesKey, tuple[list[Bucket], set[str]]],
) -> list[Series]:
    """One series per commodity and unit: import minus export."""
    groups: dict[tuple[int, str], dict[bool, tuple[list[Bucket], set[str]]]] = {}
    for key, value in per_key.items():
        groups.setdefault((key.commodity, key.unit), {})[key.direction == EXPORT] = value
    series = []
    for (commodity, unit), parts in sorted(groups.items()):
        imported, import_currencies = parts.get(False, ([], set()))
        exported, export_currencies = parts.get(True, ([], set()))
        series.append(
            _series(
                SeriesKey(commodity, 0, unit),
                net(imported, exported),
                import_currencies | export_currencies,
                direction=0,
            )
        )
    return series


def baseload(hours: Sequence[Bucket]) -> float:
    """The typical minimum load: the 5th percentile of the hourly average loads (kW or m3/h),
    over the complete hours when there are any."""
    complete = [hour for hour in hours if hour.completeness >= COMPLETE_HOUR] or hours
    if not complete:
        return 0.0
    loads = [hour.value * MS_PER_HOUR / (hour.end_ms - hour.start_ms) for hour in complete]
    return float(np.percentile(np.asarray(loads, dtype=np.float64), BASELOAD_PERCENTILE))


def stored_runs(lo: int, hi: int, zone: ZoneInfo) -> list[tuple[str, datetime, datetime]]:
    """The runs of stored buckets (rollups.cover) that tile [lo, hi), for repository.totals."""
    return [
        (granularity.value, to_datetime(a), to_datetime(b))
        for granularity, a, b in cover(lo, hi, zone)
    ]


def rfc3339(ms: int) -> str:
    moment = to_datetime(ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


class Analytics:
    def __init__(self, database: Database, devices: DeviceRegistry) -> None:
        self.database = database
        self.devices = devices

    # --- who sees what -----------------------------------------------------------------------

    async def _scope(
        self, caller: Caller, authorization: str, site: SiteInfo | None = None
    ) -> dict[str, Sources]:
        """The sources a caller's query sums (of one site, or the whole organization), by the
        zone their buckets are stored in: whole sites for those who see everything, a viewer's
        own meters otherwise."""
        if caller.role is not Role.VIEWER:
            if site is not None:
                return {site.time_zone: Sources(site_ids=[site.id])}
            async with self.database.transaction() as session:
                sites = await repository.sites_of_organization(session, caller.organization_id)
            zones: dict[str, list[str]] = {}
            for each in sites:
                zones.setdefault(each.time_zone, []).append(each.id)
            return {zone: Sources(site_ids=ids) for zone, ids in zones.items()}
        meters = await self.devices.visible_meters(authorization, site.id if site else "")
        async with self.database.transaction() as session:
            infos = await repository.meter_infos(session, [meter.meter_id for meter in meters])
            site_zones = {
                site.id: site.time_zone
                for site in await repository.sites(session, list({i.site_id for i in infos}))
            }
        by_zone: dict[str, list[str]] = {}
        for info in infos:
            if info.site_id in site_zones:
                by_zone.setdefault(site_zones[info.site_id], []).append(info.id)
        return {zone: Sources(meter_ids=ids) for zone, ids in by_zone.items()}

    async def _site(self, caller: Caller, authorization: str, site_id: str) -> SiteInfo:
        await self.devices.visible_site(caller, authorization, site_id)
        async with self.database.transaction() as session:
            site = await repository.site_info(session, site_id)
        if site is None:
            raise Unavailable("the site is not known to analytics yet; retry")
        return site

    # --- consumption -------------------------------------------------------------------------

    async def meter_consumption(
        self,
        caller: Caller,
        authorization: str,
        meter_id: str,
        start: datetime | None,
        end: datetime | None,
        granularity: Granularity | None,
        time_zone: str,
    ) -> Series:
        violations = Violations()
        check_id(violations, "meter_id", meter_id)
        window = check_window(violations, start, end, granularity, time_zone)
        meter = await self.devices.visible_meter(caller, authorization, meter_id)
        return await self._meter_series(meter, window)

    async def _meter_series(self, meter: devices_pb2.Meter, window: Window) -> Series:
        unit = canonical_unit(meter.unit)
        async with self.database.transaction() as session:
            site = await repository.site_info(session, meter.site_id)
            if site is None:
                raise Unavailable("the meter's site is not known to analytics yet; retry")
            site_zone = ZoneInfo(site.time_zone)
            zone = window.zone or site_zone
            granularity = window.granularity
            lo, hi = aligned_range(window.start_ms, window.end_ms, granularity, zone)
            if zone.key != site_zone.key:
                # Buckets of another zone: sum the quarter hours (whole quarter-hour offsets).
                stored = Granularity.QUARTER_HOUR
            elif granularity in STORED:
                stored = granularity
            else:
                stored = Granularity.DAY
            buckets, currency = await repository.meter_buckets(
                session, meter.meter_id, stored.value, to_datetime(lo), to_datetime(hi)
            )
        if stored is not granularity:
            buckets = aggregate(buckets, granularity, zone)
        return Series(meter.commodity, meter.direction, unit, buckets, currency)

    async def site_consumption(
        self,
        caller: Caller,
        authorization: str,
        site_id: str,
        start: datetime | None,
        end: datetime | None,
        granularity: Granularity | None,
        time_zone: str,
        commodity: int,
        netted: bool,
    ) -> list[Series]:
        violations = Violations()
        check_id(violations, "site_id", site_id)
        window = check_window(violations, start, end, granularity, time_zone)
        site = await self._site(caller, authorization, site_id)
        scope = await self._scope(caller, authorization, site)
        zone = window.zone or ZoneInfo(site.time_zone)
        return await self._summed_series(scope, window, zone, commodity, netted)

    async def organization_consumption(
        self,
        caller: Caller,
        authorization: str,
        start: datetime | None,
        end: datetime | None,
        granularity: Granularity | None,
        time_zone: str,
        commodity: int,
        netted: bool,
    ) -> list[Series]:
        window = check_window(Violations(), start, end, granularity, time_zone)
        scope = await self._scope(caller, authorization)
        zone = window.zone or ZoneInfo("UTC")
        return await self._summed_series(scope, window, zone, commodity, netted)

    async def _summed_series(
        self,
        scope: dict[str, Sources],
        window: Window,
        zone: ZoneInfo,
        commodity: int,
        netted: bool,
    ) -> list[Series]:
        """The sources' buckets in `zone`, summed per series (merge: peaks are the highest of
        the sources', a site's own sums carry its coincident peak)."""
        granularity = window.granularity
        lo, hi = aligned_range(window.start_ms, window.end_ms, granularity, zone)
        parts: dict[SeriesKey, list[list[Bucket]]] = {}
        currencies: dict[SeriesKey, set[str]] = {}
        async with self.database.transaction() as session:
            for zone_name, sources in scope.items():
                source_zone = ZoneInfo(zone_name)
                if zone_name == zone.key:
                    stored = granularity if granularity in STORED else Granularity.DAY
                elif _whole_hours_apart(zone, source_zone, lo, hi):
                    stored = Granularity.HOUR
                else:
                    stored = Granularity.QUARTER_HOUR
                grouped = await repository.grouped_buckets(
                    session, sources, stored.value, to_datetime(lo), to_datetime(hi), commodity
                )
                for key, (buckets, found) in grouped.items():
                    if stored is not granularity:
                        buckets = aggregate(buckets, granularity, zone)
                    parts.setdefault(key, []).append(buckets)
                    currencies.setdefault(key, set()).update(found)
        per_key = {
            key: (lists[0] if len(lists) == 1 else merge(lists), currencies[key])
            for key, lists in parts.items()
        }
        if netted:
            return _netted(per_key)
        return [
            _series(key, buckets, found, direction=None)
            for key, (buckets, found) in sorted(
                per_key.items(),
                key=lambda item: (item[0].commodity, item[0].direction, item[0].unit),
            )
        ]

    # --- summaries and top lists -------------------------------------------------------------

    async def site_summary(
        self,
        caller: Caller,
        authorization: str,
        site_id: str,
        start: datetime | None,
        end: datetime | None,
    ) -> tuple[int, int, list[CommoditySummary]]:
        """A site's figures per commodity over [start, end) (aligned to its quarter hours):
        returns the aligned range and the figures."""
        violations = Violations()
        check_id(violations, "site_id", site_id)
        check_period(violations, start, end)
        violations.raise_if_any()
        assert start is not None
        assert end is not None
        site = await self._site(caller, authorization, site_id)
        scope = await self._scope(caller, authorization, site)
        sources = scope.get(site.time_zone, Sources())
        zone = ZoneInfo(site.time_zone)
        lo, hi = aligned_range(to_ms(start), to_ms(end), Granularity.QUARTER_HOUR, zone)
        previous_lo, _ = aligned_range(lo - (hi - lo), lo, Granularity.QUARTER_HOUR, zone)
        async with self.database.transaction() as session:
            current = await repository.totals(session, sources, stored_runs(lo, hi, zone))
            previous = await repository.totals(session, sources, stored_runs(previous_lo, lo, zone))
            hours = await repository.grouped_buckets(
                session, sources, Granularity.HOUR.value, to_datetime(lo), to_datetime(hi)
            )
        return lo, hi, _summaries(current, previous, hours)

    async def top_consumers(
        self,
        caller: Caller,
        authorization: str,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        commodity: int,
    ) -> tuple[list[TopEntry], list[TopEntry]]:
        """The meters and the sites that consumed most (import), the top `limit` of each
        commodity and unit, over [start, end) aligned to each site's quarter hours."""
        violations = Violations()
        check_period(violations, start, end)
        violations.check(0 <= limit <= MAX_TOP, "limit", f"must be 0 to {MAX_TOP}")
        violations.raise_if_any()
        assert start is not None
        assert end is not None
        limit = limit or DEFAULT_TOP
        scope = await self._scope(caller, authorization)
        meters: list[Total] = []
        sites: list[Total] = []
        async with self.database.transaction() as session:
            for zone_name, sources in scope.items():
                zone = ZoneInfo(zone_name)
                lo, hi = aligned_range(to_ms(start), to_ms(end), Granularity.QUARTER_HOUR, zone)
                pieces = stored_runs(lo, hi, zone)
                # A viewer's sites: the sums of their own meters there.
                sites += await repository.totals(
                    session, sources, pieces, commodity=commodity, imports_only=True
                )
                meter_sources = sources
                if sources.site_ids:
                    infos = await repository.meters_of_sites(session, sources.site_ids)
                    meter_sources = Sources(meter_ids=[info.id for info in infos])
                meters += await repository.totals(
                    session,
                    meter_sources,
                    pieces,
                    per_meter=True,
                    commodity=commodity,
                    imports_only=True,
                )
        return _top(meters, limit, per_meter=True), _top(sites, limit, per_meter=False)

    # --- forecasts and anomalies -------------------------------------------------------------

    async def meter_forecast(
        self, caller: Caller, authorization: str, meter_id: str, horizon_hours: int
    ) -> MeterForecast:
        violations = Violations()
        check_id(violations, "meter_id", meter_id)
        violations.check(
            0 <= horizon_hours <= MAX_FORECAST_HOURS,
            "horizon_hours",
            f"must be 0 to {MAX_FORECAST_HOURS}",
        )
        violations.raise_if_any()
        horizon = horizon_hours or DEFAULT_FORECAST_HOURS
        meter = await self.devices.visible_meter(caller, authorization, meter_id)
        unit = canonical_unit(meter.unit)
        async with self.database.transaction() as session:
            site = await repository.site_info(session, meter.site_id)
            last = await repository.last_hour_with_readings(session, meter_id)
            hours: list[Bucket] = []
            if site is not None and last is not None:
                history_ms = (FORECAST_HISTORY_WEEKS * 7 + BACKTEST_DAYS) * 24 * MS_PER_HOUR
                hours, _ = await repository.meter_buckets(
                    session,
                    meter_id,
                    Granularity.HOUR.value,
                    last - timedelta(milliseconds=history_ms),
                    last + timedelta(milliseconds=1),
                )
        # Incomplete hours (before a meter's first reading, the hour still being filled, gaps)
        # would read as a drop in consumption: the model learns from complete hours only.
        hours = [hour for hour in hours if hour.completeness >= COMPLETE_HOUR]
        if site is None or len(hours) < 168:
            raise FailedPrecondition(
                "a forecast needs at least one week of complete hourly consumption",
                metadata={"hours": str(len(hours))},
            )
        starts = [hour.start_ms for hour in hours]
        values = [hour.value for hour in hours]
        predicted = forecast(starts, values, site.time_zone, horizon, FORECAST_HISTORY_WEEKS)
        model_mape = naive_mape = 0.0
        tested = 0
        if len(hours) >= BACKTEST_DAYS * 24 + 168:
            result = backtest(starts, values, site.time_zone, BACKTEST_DAYS, FORECAST_HISTORY_WEEKS)
            if math.isfinite(result.model_mape) and math.isfinite(result.naive_mape):
                model_mape, naive_mape, tested = (
                    result.model_mape,
                    result.naive_mape,
                    result.hours,
                )
        return MeterForecast(
            meter_id=meter_id,
            unit=unit,
            starts_ms=predicted.starts_ms,
            values=[max(0.0, value) for value in predicted.values],
            lower=[max(0.0, value) for value in predicted.lower],
            upper=[max(0.0, value) for value in predicted.upper],
            backtest_mape=model_mape,
            naive_mape=naive_mape,
            backtest_hours=tested,
            history_hours=min(len(hours), FORECAST_HISTORY_WEEKS * 168),
        )

    async def list_anomalies(
        self,
        caller: Caller,
        authorization: str,
        meter_id: str,
        site_id: str,
        start: datetime | None,
        end: datetime | None,
        size: int,
        token: str,
    ) -> AnomalyPage:
        violations = Violations()
        check_id(violations, "meter_id", meter_id, required=False)
        check_id(violations, "site_id", site_id, required=False)
        check_period(violations, start, end, required=False)
        violations.check(0 <= size <= 1000, "page_size", "must be 0 to 1000")
        violations.raise_if_any()
        limit = page_size(size, default=100)
        filters = [meter_id, site_id, str(start or ""), str(end or "")]
        position = decode_token(token, filters)
        after = None
        if position is not None:
            try:
                after = (datetime.fromisoformat(str(position[0])), str(position[1]))
            except (ValueError, IndexError) as error:
                raise InvalidArgument([("page_token", "is not a token this API issued")]) from error
        meter_ids: list[str] | None = None
        if meter_id:
            await self.devices.visible_meter(caller, authorization, meter_id)
            meter_ids = [meter_id]
        elif site_id:
            await self.devices.visible_site(caller, authorization, site_id)
        if meter_ids is None and caller.role is Role.VIEWER:
            meters = await self.devices.visible_meters(authorization, site_id)
            meter_ids = [meter.meter_id for meter in meters]
        async with self.database.transaction() as session:
            found = await repository.list_anomalies(
                session,
                caller.organization_id,
                meter_ids=meter_ids,
                site_id=site_id or None,
                start=start,
                end=end,
                after=after,
                limit=limit + 1,
            )
        page = found[:limit]
        next_token = ""
        if len(found) > limit:
            next_token = encode_token([page[-1].start_time.isoformat(), page[-1].id], filters)
        return AnomalyPage(page, next_token)

    # --- export ------------------------------------------------------------------------------

    async def export_csv(
        self,
        caller: Caller,
        authorization: str,
        meter_id: str,
        site_id: str,
        start: datetime | None,
        end: datetime | None,
        granularity: Granularity | None,
        time_zone: str,
        commodity: int,
        file_format: str,
    ) -> AsyncIterator[bytes]:
        """The CSV document in chunks of at most EXPORT_CHUNK_BYTES. Validation and access
        checks happen before the first chunk, so errors are proper statuses."""
        violations = Violations()
        check_id(violations, "meter_id", meter_id, required=False)
        check_id(violations, "site_id", site_id, required=False)
        violations.check(
            not (meter_id and site_id), "site_id", "give at most one of meter_id and site_id"
        )
        violations.check(file_format in ("", "csv"), "format", 'only "csv" is supported')
        window = check_window(violations, start, end, granularity, time_zone)
        if meter_id:
            meters = [await self.devices.visible_meter(caller, authorization, meter_id)]
        else:
            if site_id:
                await self.devices.visible_site(caller, authorization, site_id)
            meters = await self.devices.visible_meters(authorization, site_id)
        meters = sorted(
            (meter for meter in meters if not commodity or meter.commodity == commodity),
            key=lambda meter: meter.meter_id,
        )
        return self._csv_chunks(meters, window)

    async def _csv_chunks(
        self, meters: Sequence[devices_pb2.Meter], window: Window
    ) -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for meter in meters:
            try:
                series = await self._meter_series(meter, window)
            except (FailedPrecondition, Unavailable):
                continue  # a meter analytics cannot count (yet) has no rows
            for bucket in series.buckets:
                writer.writerow(
                    (
                        meter.meter_id,
                        meter.site_id,
                        rfc3339(bucket.start_ms),
                        rfc3339(bucket.end_ms),
                        repr(bucket.value),
                        series.unit,
                        "" if bucket.cost is None else repr(bucket.cost),
                        series.currency if bucket.cost is not None else "",
                        "" if bucket.co2_kg is None else repr(bucket.co2_kg),
                        repr(bucket.completeness),
                    )
                )
                if buffer.tell() >= EXPORT_CHUNK_BYTES - 4096:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()


def _summaries(
    current: Sequence[Total],
    previous: Sequence[Total],
    hours: dict[SeriesKey, tuple[list[Bucket], set[str]]],
) -> list[CommoditySummary]:
    """Per commodity and unit: import and export totals of the period, its peak and
    baseload, cost and CO2, and the previous period's import total."""
    kinds = sorted({(t.key.commodity, t.key.unit) for t in current})
    summaries = []
    for commodity, unit in kinds:
        imports = [t for t in current if (t.key.commodity, t.key.unit) == (commodity, unit)]
        imported = [t.bucket for t in imports if t.key.direction != EXPORT]
        exported = [t.bucket for t in imports if t.key.direction == EXPORT]
        both = merge([imported + exported])
        total_import = math.fsum(b.value for b in imported)
        peak = max(imported, key=lambda b: b.peak_demand, default=None)
        imported_hours = [
            bucket
            for key, (buckets, _) in hours.items()
            if (key.commodity, key.unit) == (commodity, unit) and key.direction != EXPORT
            for bucket in buckets
        ]
        before = math.fsum(
            t.bucket.value
            for t in previous
            if (t.key.commodity, t.key.unit) == (commodity, unit) and t.key.direction != EXPORT
        )
        currency = _single_currency(c for t in imports for c in t.currencies)
        cost = both[0].cost if both and currency is not None else None
        summaries.append(
            CommoditySummary(
                commodity=commodity,
                unit=unit,
                total=total_import,
                exported=math.fsum(b.value for b in exported),
                peak_demand=peak.peak_demand if peak else 0.0,
                peak_time_ms=peak.peak_time_ms if peak else 0,
                baseload=baseload(imported_hours),
                cost=cost,
                currency=currency or "",
                co2_kg=both[0].co2_kg if both else None,
                previous_total=before,
                change=(total_import - before) / before if before > 0 else None,
                completeness=both[0].completeness if both else 0.0,
            )
        )
    return summaries


def _top(totals: Sequence[Total], limit: int, *, per_meter: bool) -> list[TopEntry]:
    """The largest `limit` totals of each commodity and unit (a source's totals over several
    rows of one series are summed first)."""
    sums: dict[tuple[str, int, str], tuple[str, float]] = {}
    for total in totals:
        key = (total.source_id, total.key.commodity, total.key.unit)
        site, amount = sums.get(key, (total.site_id, 0.0))
        sums[key] = (site, amount + total.bucket.value)
    by_kind: dict[tuple[int, str], list[TopEntry]] = {}
    for (source, commodity, unit), (site, amount) in sums.items():
        by_kind.setdefault((commodity, unit), []).append(
            TopEntry(
                meter_id=source if per_meter else "",
                site_id=site,
                commodity=commodity,
                total=amount,
                unit=unit,
            )
        )
    ranked = []
    for kind in sorted(by_kind):
        entries = sorted(by_kind[kind], key=lambda e: (-e.total, e.meter_id, e.site_id))
        ranked.extend(entries[:limit])
    return ranked
