"""The analytics service's permission matrix: every RPC (enumerated from the descriptor, so a
new RPC without a row fails here) by every kind of caller, over native gRPC through Envoy.

Tariffs, assignments and emission factors are managed by managers and admins and read by
everyone of the organization (a viewer reads a site's assignments only for a site they see);
another organization's admin gets NOT_FOUND for anything naming this organization's
resources. Consumption, summary and forecast of the assigned meter or its site are read by
everyone who sees it; organization-wide reads (consumption, top consumers, anomalies, export)
answer everyone signed in, within their own organization (a viewer: their meters only); the
rollup consumer's status needs ORGANIZATION_READ (operators and up, of any organization: it is
not about one organization's resources)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from energymesh.devices.v1 import devices_pb2
from services.launcher.mesh import Mesh
from tests.e2e.analytics_steps import (
    assign_tariff,
    create_emission_factor,
    create_tariff,
    flat_version,
    quarter_starts,
    unique_year,
    write_quarter_amounts,
)
from tests.e2e.conftest import gateway_client
from tests.e2e.device_steps import assign, create_meter, create_site
from tests.e2e.helpers import Account, add_user, eventually, register

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
CALLERS = (
    "anonymous",
    "other_admin",
    "viewer",
    "viewer_assigned",
    "operator",
    "manager",
    "admin",
)
# Managing the first organization's resources (admin, manager).
MANAGE = (UNAUTHENTICATED, NOT_FOUND, DENIED, DENIED, DENIED, OK, OK)
# Creating in one's own organization without naming the first one's resources.
CREATE_OWN = (UNAUTHENTICATED, OK, DENIED, DENIED, DENIED, OK, OK)
# Reading an organization-wide resource of the first organization.
READ = (UNAUTHENTICATED, NOT_FOUND, OK, OK, OK, OK, OK)
# Reading what belongs to the meter (and site) assigned to viewer_assigned.
READ_ASSIGNED = (UNAUTHENTICATED, NOT_FOUND, NOT_FOUND, OK, OK, OK, OK)
# Listing: everyone signed in, each within their own organization.
LIST = (UNAUTHENTICATED, OK, OK, OK, OK, OK, OK)
# Operators and up, whatever their organization (nothing of the first one is named).
ORGANIZATION_READ = (UNAUTHENTICATED, OK, DENIED, DENIED, OK, OK, OK)


@dataclass
class World:
    accounts: dict[str, Account]
    site_id: str
    meter_id: str  # on site_id, assigned to viewer_assigned
    tariff_id: str
    http: httpx.AsyncClient

    @property
    def admin(self) -> Account:
        return self.accounts["admin"]


Metadata = tuple[tuple[str, str], ...]
if TYPE_CHECKING:  # the async stub class exists only in the type stubs
    Stub = analytics_pb2_grpc.AnalyticsServiceAsyncStub
    Call = Callable[[Stub, World, Metadata], Awaitable[object]]


def stamp(text: str) -> timestamp_pb2.Timestamp:
    moment = timestamp_pb2.Timestamp()
    moment.FromJsonString(text)
    return moment


def new_tariff() -> analytics_pb2.Tariff:
    return analytics_pb2.Tariff(
        name="Matrix",
        currency_code="EUR",
        versions=[analytics_pb2.TariffVersion(effective_from=stamp("2026-01-01T00:00:00Z"))],
    )


def new_factor() -> analytics_pb2.EmissionFactor:
    """A factor no other call overlaps."""
    year = unique_year()
    return analytics_pb2.EmissionFactor(
        commodity=devices_pb2.COMMODITY_ELECTRICITY,
        kg_per_unit=0.4,
        effective_from=stamp(f"{year}-01-01T00:00:00Z"),
        effective_to=stamp(f"{year}-02-01T00:00:00Z"),
    )


async def delete_fresh_tariff(stub: Stub, world: World, metadata: Metadata) -> object:
    tariff = await create_tariff(world.http, world.admin, [flat_version(0.1)])
    return await stub.DeleteTariff(
        analytics_pb2.DeleteTariffRequest(tariff_id=tariff["tariffId"]), metadata=metadata
    )


async def delete_fresh_assignment(stub: Stub, world: World, metadata: Metadata) -> object:
    site = await create_site(world.http, world.admin, name="Assigned")
    assignment = await assign_tariff(world.http, world.admin, site["siteId"], world.tariff_id)
    return await stub.DeleteTariffAssignment(
        analytics_pb2.DeleteTariffAssignmentRequest(
            site_id=site["siteId"], assignment_id=assignment["assignmentId"]
        ),
        metadata=metadata,
    )


async def delete_fresh_factor(stub: Stub, world: World, metadata: Metadata) -> object:
    year = unique_year()
    factor = await create_emission_factor(
        world.http, world.admin, 0.3, f"{year}-01-01T00:00:00Z", f"{year}-02-01T00:00:00Z"
    )
    return await stub.DeleteEmissionFactor(
        analytics_pb2.DeleteEmissionFactorRequest(emission_factor_id=factor["emissionFactorId"]),
        metadata=metadata,
    )


async def export(stub: Stub, world: World, metadata: Metadata) -> object:
    call = stub.ExportConsumption(
        analytics_pb2.ExportConsumptionRequest(
            start_time=START,
            end_time=END,
            granularity=analytics_pb2.GRANULARITY_DAY,
        ),
        metadata=metadata,
    )
    return [chunk async for chunk in call]


START, END = stamp("2026-01-01T00:00:00Z"), stamp("2026-01-02T00:00:00Z")


# RPC → (how to call it, expected code for each caller in CALLERS order).
MATRIX: dict[str, tuple[Call, tuple[grpc.StatusCode, ...]]] = {
    "GetMeterConsumption": (
        lambda s, w, m: s.GetMeterConsumption(
            analytics_pb2.GetMeterConsumptionRequest(
                meter_id=w.meter_id,
                granularity=analytics_pb2.GRANULARITY_DAY,
                start_time=START,
                end_time=END,
            ),
            metadata=m,
        ),
        READ_ASSIGNED,
    ),
    "GetSiteConsumption": (
        lambda s, w, m: s.GetSiteConsumption(
            analytics_pb2.GetSiteConsumptionRequest(
                site_id=w.site_id,
                granularity=analytics_pb2.GRANULARITY_DAY,
                start_time=START,
                end_time=END,
            ),
            metadata=m,
        ),
        READ_ASSIGNED,
    ),
    "GetOrganizationConsumption": (
        lambda s, w, m: s.GetOrganizationConsumption(
            analytics_pb2.GetOrganizationConsumptionRequest(
                granularity=analytics_pb2.GRANULARITY_DAY, start_time=START, end_time=END
            ),
            metadata=m,
        ),
        LIST,
    ),
    "GetSiteSummary": (
        lambda s, w, m: s.GetSiteSummary(
            analytics_pb2.GetSiteSummaryRequest(site_id=w.site_id, start_time=START, end_time=END),
            metadata=m,
        ),
        READ_ASSIGNED,
    ),
    "ListTopConsumers": (
        lambda s, w, m: s.ListTopConsumers(
            analytics_pb2.ListTopConsumersRequest(start_time=START, end_time=END), metadata=m
        ),
        LIST,
    ),
    "GetMeterForecast": (
        lambda s, w, m: s.GetMeterForecast(
            analytics_pb2.GetMeterForecastRequest(meter_id=w.meter_id), metadata=m
        ),
        READ_ASSIGNED,
    ),
    "ListAnomalies": (
        lambda s, w, m: s.ListAnomalies(analytics_pb2.ListAnomaliesRequest(), metadata=m),
        LIST,
    ),
    "ExportConsumption": (export, LIST),
    "CreateTariff": (
        lambda s, w, m: s.CreateTariff(
            analytics_pb2.CreateTariffRequest(tariff=new_tariff()), metadata=m
        ),
        CREATE_OWN,
    ),
    "GetTariff": (
        lambda s, w, m: s.GetTariff(
            analytics_pb2.GetTariffRequest(tariff_id=w.tariff_id), metadata=m
        ),
        READ,
    ),
    "ListTariffs": (
        lambda s, w, m: s.ListTariffs(analytics_pb2.ListTariffsRequest(), metadata=m),
        LIST,
    ),
    "UpdateTariff": (
        lambda s, w, m: s.UpdateTariff(
            analytics_pb2.UpdateTariffRequest(
                tariff=analytics_pb2.Tariff(tariff_id=w.tariff_id, name="Renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=m,
        ),
        MANAGE,
    ),
    "DeleteTariff": (delete_fresh_tariff, MANAGE),
    "CreateTariffAssignment": (
        lambda s, w, m: s.CreateTariffAssignment(
            analytics_pb2.CreateTariffAssignmentRequest(
                site_id=w.site_id,
                assignment=analytics_pb2.TariffAssignment(
                    tariff_id=w.tariff_id, commodity=devices_pb2.COMMODITY_ELECTRICITY
                ),
            ),
            metadata=m,
        ),
        MANAGE,
    ),
    "ListTariffAssignments": (
        lambda s, w, m: s.ListTariffAssignments(
            analytics_pb2.ListTariffAssignmentsRequest(site_id=w.site_id), metadata=m
        ),
        READ_ASSIGNED,
    ),
    "DeleteTariffAssignment": (delete_fresh_assignment, MANAGE),
    "CreateEmissionFactor": (
        lambda s, w, m: s.CreateEmissionFactor(
            analytics_pb2.CreateEmissionFactorRequest(emission_factor=new_factor()), metadata=m
        ),
        CREATE_OWN,
    ),
    "ListEmissionFactors": (
        lambda s, w, m: s.ListEmissionFactors(
            analytics_pb2.ListEmissionFactorsRequest(), metadata=m
        ),
        LIST,
    ),
    "DeleteEmissionFactor": (delete_fresh_factor, MANAGE),
    "GetRollupStatus": (
        lambda s, w, m: s.GetRollupStatus(analytics_pb2.GetRollupStatusRequest(), metadata=m),
        ORGANIZATION_READ,
    ),
}


def test_every_rpc_has_a_row() -> None:
    service = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
    assert set(MATRIX) == {method.name for method in service.methods}


@pytest.fixture(scope="module")
async def world(mesh: Mesh) -> AsyncIterator[World]:
    async with gateway_client(mesh) as http:
        admin = await register(http, "Analytics Matrix Org")
        other = await register(http, "Other Org")
        accounts = {"admin": admin, "other_admin": other}
        for role in ("viewer", "operator", "manager"):
            accounts[role] = await add_user(http, admin, f"ROLE_{role.upper()}")
        accounts["viewer_assigned"] = await add_user(http, admin, "ROLE_VIEWER")
        site = await create_site(http, admin)
        meter = await create_meter(http, admin, site["siteId"])
        await assign(http, admin, meter["meterId"], accounts["viewer_assigned"].user_id)
        tariff = await create_tariff(http, admin, [flat_version(0.2)])

        # Eight days of readings, so that the meter has the week of history a forecast needs.
        starts = quarter_starts(date(2026, 1, 1), date(2026, 1, 8))
        await write_quarter_amounts(http, admin, meter["meterId"], starts, [0.5] * len(starts))

        async def forecastable() -> bool:
            response = await http.get(
                f"/v1/meters/{meter['meterId']}/forecast", headers=admin.headers
            )
            return response.status_code == 200

        # Analytics learns of the site from the registry's events, then rolls the readings up.
        await eventually(forecastable, wait_seconds=60)
        yield World(accounts, site["siteId"], meter["meterId"], tariff["tariffId"], http)


@pytest.mark.parametrize("method", sorted(MATRIX))
async def test_permission_matrix(
    method: str, world: World, gateway_channel: grpc.aio.Channel
) -> None:
    call, expected = MATRIX[method]
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    for caller, code in zip(CALLERS, expected, strict=True):
        token = "" if caller == "anonymous" else world.accounts[caller].access_token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            await call(stub, world, metadata)
            actual = OK
        except grpc.aio.AioRpcError as error:
            actual = error.code()
        assert actual == code, f"{method} as {caller}: expected {code.name}, got {actual.name}"
