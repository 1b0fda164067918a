"""The gRPC adapter: turns requests into domain calls and domain results into responses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import empty_pb2, timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.analytics.domain import Analytics, Series, TopEntry
from services.analytics.rollups import Granularity
from services.analytics.rows import anomaly_to_proto
from services.analytics.tariff_catalog import (
    TARIFF_FIELDS,
    TariffCatalog,
    assignment_to_proto,
    emission_factor_to_proto,
    tariff_to_proto,
)
from services.kernel.errors import InvalidArgument
from services.kernel.interceptors import caller
from services.kernel.permissions import Permission
from services.kernel.protos import timestamp_or_none

SERVICE = "energymesh.analytics.v1.AnalyticsService"
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

# Every RPC's access rule. Reads need DATA_READ (viewers are narrowed to their assigned meters
# by the registry's GetMeter); tariffs and emission factors are managed by managers and admins.
ACCESS: dict[str, Permission] = {
    f"/{SERVICE}/{method}": permission
    for method, permission in {
        "GetMeterConsumption": Permission.DATA_READ,
        "GetSiteConsumption": Permission.DATA_READ,
        "GetOrganizationConsumption": Permission.DATA_READ,
        "GetSiteSummary": Permission.DATA_READ,
        "ListTopConsumers": Permission.DATA_READ,
        "GetMeterForecast": Permission.DATA_READ,
        "ListAnomalies": Permission.DATA_READ,
        "ExportConsumption": Permission.DATA_READ,
        "CreateTariff": Permission.TARIFFS_MANAGE,
        "GetTariff": Permission.DATA_READ,
        "ListTariffs": Permission.DATA_READ,
        "UpdateTariff": Permission.TARIFFS_MANAGE,
        "DeleteTariff": Permission.TARIFFS_MANAGE,
        "CreateTariffAssignment": Permission.TARIFFS_MANAGE,
        "ListTariffAssignments": Permission.DATA_READ,
        "DeleteTariffAssignment": Permission.TARIFFS_MANAGE,
        "CreateEmissionFactor": Permission.TARIFFS_MANAGE,
        "ListEmissionFactors": Permission.DATA_READ,
        "DeleteEmissionFactor": Permission.TARIFFS_MANAGE,
        # Process gauges, not data: for operators and above.
        "GetRollupStatus": Permission.ORGANIZATION_READ,
    }.items()
}

GRANULARITIES = {
    analytics_pb2.GRANULARITY_QUARTER_HOUR: Granularity.QUARTER_HOUR,
    analytics_pb2.GRANULARITY_HOUR: Granularity.HOUR,
    analytics_pb2.GRANULARITY_DAY: Granularity.DAY,
    analytics_pb2.GRANULARITY_WEEK: Granularity.WEEK,
    analytics_pb2.GRANULARITY_MONTH: Granularity.MONTH,
}


def authorization(context: Any) -> str:
    metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
    return metadata.get("authorization", "")


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    seconds, millis = divmod(ms, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=millis * 1_000_000)


def update_paths(request: analytics_pb2.UpdateTariffRequest) -> set[str]:
    """The tariff fields an update names (AIP-134); an empty mask: those the request sets."""
    paths = {_CAMEL.sub("_", path).lower() for path in request.update_mask.paths} - {"etag"}
    unknown = paths - set(TARIFF_FIELDS)
    if unknown:
        raise InvalidArgument([("update_mask", f"cannot update {', '.join(sorted(unknown))}")])
    if not paths:
        paths = {field.name for field, _ in request.tariff.ListFields()} & set(TARIFF_FIELDS)
    return paths


def top_to_proto(entry: TopEntry) -> analytics_pb2.TopConsumer:
    return analytics_pb2.TopConsumer(
        meter_id=entry.meter_id,
        site_id=entry.site_id,
        commodity=entry.commodity,  # type: ignore[arg-type]
        total=entry.total,
        unit=entry.unit,
    )


def series_to_proto(series: Series) -> analytics_pb2.ConsumptionSeries:
    proto = analytics_pb2.ConsumptionSeries(
        commodity=series.commodity,  # type: ignore[arg-type]
        direction=series.direction,  # type: ignore[arg-type]
        currency_code=series.currency,
    )
    # add() with scalars, then the timestamps' fields: several times faster than building
    # each point from keyword arguments (a month of quarter hours is 3,000 points).
    points = proto.points
    for bucket in series.buckets:
        point = points.add(
            value=bucket.value,
            unit=series.unit,
            cost=bucket.cost,
            co2_kg=bucket.co2_kg,
            completeness=bucket.completeness,
            peak_demand=bucket.peak_demand,
            reset_count=bucket.resets,
        )
        set_timestamp(point.start_time, bucket.start_ms)
        set_timestamp(point.end_time, bucket.end_ms)
        set_timestamp(point.peak_time, bucket.peak_time_ms)
    return proto


def set_timestamp(stamp: timestamp_pb2.Timestamp, ms: int) -> None:
    stamp.seconds, millis = divmod(ms, 1000)
    if millis:
        stamp.nanos = millis * 1_000_000


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(
        self,
        domain: Analytics,
        catalog: TariffCatalog,
        rollup_status: Callable[[], Awaitable[analytics_pb2.RollupStatus]],
    ) -> None:
        self.domain = domain
        self.catalog = catalog
        self.rollup_status = rollup_status

    async def GetMeterConsumption(
        self, request: analytics_pb2.GetMeterConsumptionRequest, context: Any
    ) -> analytics_pb2.GetMeterConsumptionResponse:
        series = await self.domain.meter_consumption(
            caller(),
            authorization(context),
            request.meter_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            GRANULARITIES.get(request.granularity),
            request.time_zone,
        )
        return analytics_pb2.GetMeterConsumptionResponse(series=series_to_proto(series))

    async def GetSiteConsumption(
        self, request: analytics_pb2.GetSiteConsumptionRequest, context: Any
    ) -> analytics_pb2.GetSiteConsumptionResponse:
        series = await self.domain.site_consumption(
            caller(),
            authorization(context),
            request.site_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            GRANULARITIES.get(request.granularity),
            request.time_zone,
            request.commodity,
            request.net,
        )
        return analytics_pb2.GetSiteConsumptionResponse(series=map(series_to_proto, series))

    async def GetOrganizationConsumption(
        self, request: analytics_pb2.GetOrganizationConsumptionRequest, context: Any
    ) -> analytics_pb2.GetOrganizationConsumptionResponse:
        series = await self.domain.organization_consumption(
            caller(),
            authorization(context),
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            GRANULARITIES.get(request.granularity),
            request.time_zone,
            request.commodity,
            request.net,
        )
        return analytics_pb2.GetOrganizationConsumptionResponse(series=map(series_to_proto, series))

    async def GetSiteSummary(
        self, request: analytics_pb2.GetSiteSummaryRequest, context: Any
    ) -> analytics_pb2.SiteSummary:
        start_ms, end_ms, summaries = await self.domain.site_summary(
            caller(),
            authorization(context),
            request.site_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
        )
        return analytics_pb2.SiteSummary(
            site_id=request.site_id,
            start_time=timestamp(start_ms),
            end_time=timestamp(end_ms),
            commodities=[
                analytics_pb2.CommoditySummary(
                    commodity=summary.commodity,  # type: ignore[arg-type]
                    unit=summary.unit,
                    total=summary.total,
                    exported=summary.exported,
                    peak_demand=summary.peak_demand,
                    peak_time=timestamp(summary.peak_time_ms),
                    baseload=summary.baseload,
                    cost=summary.cost,
                    currency_code=summary.currency,
                    co2_kg=summary.co2_kg,
                    previous_total=summary.previous_total,
                    change=summary.change,
                    completeness=summary.completeness,
                )
                for summary in summaries
            ],
        )

    async def ListTopConsumers(
        self, request: analytics_pb2.ListTopConsumersRequest, context: Any
    ) -> analytics_pb2.ListTopConsumersResponse:
        meters, sites = await self.domain.top_consumers(
            caller(),
            authorization(context),
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            request.limit,
            request.commodity,
        )
        return analytics_pb2.ListTopConsumersResponse(
            meters=map(top_to_proto, meters), sites=map(top_to_proto, sites)
        )

    async def GetMeterForecast(
        self, request: analytics_pb2.GetMeterForecastRequest, context: Any
    ) -> analytics_pb2.MeterForecast:
        result = await self.domain.meter_forecast(
            caller(), authorization(context), request.meter_id, request.horizon_hours
        )
        return analytics_pb2.MeterForecast(
            meter_id=result.meter_id,
            unit=result.unit,
            points=[
                analytics_pb2.ForecastPoint(
                    start_time=timestamp(start), value=value, lower=lower, upper=upper
                )
                for start, value, lower, upper in zip(
                    result.starts_ms, result.values, result.lower, result.upper, strict=True
                )
            ],
            backtest_mape=result.backtest_mape,
            seasonal_naive_mape=result.naive_mape,
            backtest_hours=result.backtest_hours,
            history_hours=result.history_hours,
        )

    async def ListAnomalies(
        self, request: analytics_pb2.ListAnomaliesRequest, context: Any
    ) -> analytics_pb2.ListAnomaliesResponse:
        page = await self.domain.list_anomalies(
            caller(),
            authorization(context),
            request.meter_id,
            request.site_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            request.page_size,
            request.page_token,
        )
        return analytics_pb2.ListAnomaliesResponse(
            anomalies=map(anomaly_to_proto, page.anomalies), next_page_token=page.next_page_token
        )

    async def ExportConsumption(
        self, request: analytics_pb2.ExportConsumptionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        chunks = await self.domain.export_csv(
            caller(),
            authorization(context),
            request.meter_id,
            request.site_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            GRANULARITIES.get(request.granularity),
            request.time_zone,
            request.commodity,
            request.format,
        )
        async for chunk in chunks:
            yield httpbody_pb2.HttpBody(content_type="text/csv; charset=utf-8", data=chunk)

    async def GetRollupStatus(
        self, request: analytics_pb2.GetRollupStatusRequest, context: Any
    ) -> analytics_pb2.RollupStatus:
        return await self.rollup_status()

    # --- tariffs and emission factors (services/analytics/tariff_catalog.py) -------------------

    async def CreateTariff(
        self, request: analytics_pb2.CreateTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        return tariff_to_proto(await self.catalog.create_tariff(caller(), request.tariff))

    async def GetTariff(
        self, request: analytics_pb2.GetTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        return tariff_to_proto(await self.catalog.get_tariff(caller(), request.tariff_id))

    async def ListTariffs(
        self, request: analytics_pb2.ListTariffsRequest, context: Any
    ) -> analytics_pb2.ListTariffsResponse:
        page = await self.catalog.list_tariffs(caller(), request.page_size, request.page_token)
        return analytics_pb2.ListTariffsResponse(
            tariffs=[tariff_to_proto(tariff) for tariff in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateTariff(
        self, request: analytics_pb2.UpdateTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        paths = update_paths(request)
        return tariff_to_proto(await self.catalog.update_tariff(caller(), request.tariff, paths))

    async def DeleteTariff(
        self, request: analytics_pb2.DeleteTariffRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.catalog.delete_tariff(caller(), request.tariff_id)
        return empty_pb2.Empty()

    async def CreateTariffAssignment(
        self, request: analytics_pb2.CreateTariffAssignmentRequest, context: Any
    ) -> analytics_pb2.TariffAssignment:
        assignment = await self.catalog.create_assignment(
            caller(), authorization(context), request.site_id, request.assignment
        )
        return assignment_to_proto(assignment)

    async def ListTariffAssignments(
        self, request: analytics_pb2.ListTariffAssignmentsRequest, context: Any
    ) -> analytics_pb2.ListTariffAssignmentsResponse:
        assignments = await self.catalog.list_assignments(
            caller(), authorization(context), request.site_id
        )
        return analytics_pb2.ListTariffAssignmentsResponse(
            assignments=[assignment_to_proto(assignment) for assignment in assignments]
        )

    async def DeleteTariffAssignment(
        self, request: analytics_pb2.DeleteTariffAssignmentRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.catalog.delete_assignment(caller(), request.site_id, request.assignment_id)
        return empty_pb2.Empty()

    async def CreateEmissionFactor(
        self, request: analytics_pb2.CreateEmissionFactorRequest, context: Any
    ) -> analytics_pb2.EmissionFactor:
        factor = await self.catalog.create_emission_factor(caller(), request.emission_factor)
        return emission_factor_to_proto(factor)

    async def ListEmissionFactors(
        self, request: analytics_pb2.ListEmissionFactorsRequest, context: Any
    ) -> analytics_pb2.ListEmissionFactorsResponse:
        page = await self.catalog.list_emission_factors(
            caller(), request.commodity, request.page_size, request.page_token
        )
        return analytics_pb2.ListEmissionFactorsResponse(
            emission_factors=[emission_factor_to_proto(factor) for factor in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteEmissionFactor(
        self, request: analytics_pb2.DeleteEmissionFactorRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.catalog.delete_emission_factor(caller(), request.emission_factor_id)
        return empty_pb2.Empty()
