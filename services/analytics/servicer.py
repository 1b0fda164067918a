"""The gRPC adapter: turns requests into domain calls and domain results into responses.

This slice serves GetMeterConsumption; every other RPC of the contract answers UNIMPLEMENTED
(with its access rule already in force, so the permission matrix does not change when it
lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2, timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.analytics.domain import Analytics, Series
from services.analytics.rollups import Granularity
from services.kernel.errors import DomainError
from services.kernel.interceptors import caller
from services.kernel.permissions import Permission
from services.kernel.protos import timestamp_or_none

SERVICE = "energymesh.analytics.v1.AnalyticsService"

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
    }.items()
}

GRANULARITIES = {
    analytics_pb2.GRANULARITY_QUARTER_HOUR: Granularity.QUARTER_HOUR,
    analytics_pb2.GRANULARITY_HOUR: Granularity.HOUR,
    analytics_pb2.GRANULARITY_DAY: Granularity.DAY,
    analytics_pb2.GRANULARITY_WEEK: Granularity.WEEK,
    analytics_pb2.GRANULARITY_MONTH: Granularity.MONTH,
}


class Unimplemented(DomainError):
    """An RPC of the contract this version does not serve yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "ERROR_REASON_UNSPECIFIED"

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} is not implemented yet", metadata={"method": method})


def authorization(context: Any) -> str:
    metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
    return metadata.get("authorization", "")


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def series_to_proto(series: Series) -> analytics_pb2.ConsumptionSeries:
    return analytics_pb2.ConsumptionSeries(
        commodity=series.meter.commodity,
        direction=series.meter.direction,
        points=[
            analytics_pb2.ConsumptionPoint(
                start_time=timestamp(bucket.start_ms),
                end_time=timestamp(bucket.end_ms),
                value=bucket.value,
                unit=series.unit,
                completeness=bucket.completeness,
                peak_demand=bucket.peak_demand,
                peak_time=timestamp(bucket.peak_time_ms),
                reset_count=bucket.resets,
            )
            for bucket in series.buckets
        ],
    )


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, domain: Analytics) -> None:
        self.domain = domain

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

    # --- not implemented yet -----------------------------------------------------------------

    async def GetSiteConsumption(
        self, request: analytics_pb2.GetSiteConsumptionRequest, context: Any
    ) -> analytics_pb2.GetSiteConsumptionResponse:
        raise Unimplemented("GetSiteConsumption")

    async def GetOrganizationConsumption(
        self, request: analytics_pb2.GetOrganizationConsumptionRequest, context: Any
    ) -> analytics_pb2.GetOrganizationConsumptionResponse:
        raise Unimplemented("GetOrganizationConsumption")

    async def GetSiteSummary(
        self, request: analytics_pb2.GetSiteSummaryRequest, context: Any
    ) -> analytics_pb2.SiteSummary:
        raise Unimplemented("GetSiteSummary")

    async def ListTopConsumers(
        self, request: analytics_pb2.ListTopConsumersRequest, context: Any
    ) -> analytics_pb2.ListTopConsumersResponse:
        raise Unimplemented("ListTopConsumers")

    async def GetMeterForecast(
        self, request: analytics_pb2.GetMeterForecastRequest, context: Any
    ) -> analytics_pb2.MeterForecast:
        raise Unimplemented("GetMeterForecast")

    async def ListAnomalies(
        self, request: analytics_pb2.ListAnomaliesRequest, context: Any
    ) -> analytics_pb2.ListAnomaliesResponse:
        raise Unimplemented("ListAnomalies")

    async def ExportConsumption(
        self, request: analytics_pb2.ExportConsumptionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        raise Unimplemented("ExportConsumption")
        yield httpbody_pb2.HttpBody()  # pragma: no cover - makes this a stream handler

    async def CreateTariff(
        self, request: analytics_pb2.CreateTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        raise Unimplemented("CreateTariff")

    async def GetTariff(
        self, request: analytics_pb2.GetTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        raise Unimplemented("GetTariff")

    async def ListTariffs(
        self, request: analytics_pb2.ListTariffsRequest, context: Any
    ) -> analytics_pb2.ListTariffsResponse:
        raise Unimplemented("ListTariffs")

    async def UpdateTariff(
        self, request: analytics_pb2.UpdateTariffRequest, context: Any
    ) -> analytics_pb2.Tariff:
        raise Unimplemented("UpdateTariff")

    async def DeleteTariff(
        self, request: analytics_pb2.DeleteTariffRequest, context: Any
    ) -> empty_pb2.Empty:
        raise Unimplemented("DeleteTariff")

    async def CreateTariffAssignment(
        self, request: analytics_pb2.CreateTariffAssignmentRequest, context: Any
    ) -> analytics_pb2.TariffAssignment:
        raise Unimplemented("CreateTariffAssignment")

    async def ListTariffAssignments(
        self, request: analytics_pb2.ListTariffAssignmentsRequest, context: Any
    ) -> analytics_pb2.ListTariffAssignmentsResponse:
        raise Unimplemented("ListTariffAssignments")

    async def DeleteTariffAssignment(
        self, request: analytics_pb2.DeleteTariffAssignmentRequest, context: Any
    ) -> empty_pb2.Empty:
        raise Unimplemented("DeleteTariffAssignment")

    async def CreateEmissionFactor(
        self, request: analytics_pb2.CreateEmissionFactorRequest, context: Any
    ) -> analytics_pb2.EmissionFactor:
        raise Unimplemented("CreateEmissionFactor")

    async def ListEmissionFactors(
        self, request: analytics_pb2.ListEmissionFactorsRequest, context: Any
    ) -> analytics_pb2.ListEmissionFactorsResponse:
        raise Unimplemented("ListEmissionFactors")

    async def DeleteEmissionFactor(
        self, request: analytics_pb2.DeleteEmissionFactorRequest, context: Any
    ) -> empty_pb2.Empty:
        raise Unimplemented("DeleteEmissionFactor")
