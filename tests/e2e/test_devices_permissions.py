"""The devices service's permission matrix: every RPC (enumerated from the descriptor, so a new
RPC without a row fails here) by every kind of caller, over native gRPC through Envoy.

Another organization's admin gets NOT_FOUND for anything naming this organization's resources;
a viewer sees only what is assigned to them (NOT_FOUND otherwise) and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from services.launcher.mesh import Mesh
from tests.e2e.conftest import gateway_client
from tests.e2e.device_steps import (
    assign,
    create_meter,
    create_site,
    create_token,
    unique_serial,
)
from tests.e2e.helpers import Account, add_user, register

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
# Who manages (admin, manager) and who only reads.
MANAGE = (UNAUTHENTICATED, NOT_FOUND, DENIED, DENIED, DENIED, OK, OK)
# Reading one resource of the first organization that is assigned to viewer_assigned.
READ_ASSIGNED = (UNAUTHENTICATED, NOT_FOUND, NOT_FOUND, OK, OK, OK, OK)
# Listing: everyone signed in, each within their own organization (and assignments).
LIST = (UNAUTHENTICATED, OK, OK, OK, OK, OK, OK)
# Creating something in one's own organization without naming the first one's resources.
CREATE_OWN = (UNAUTHENTICATED, OK, DENIED, DENIED, DENIED, OK, OK)


@dataclass
class World:
    accounts: dict[str, Account]
    site_id: str
    meter_id: str  # on site_id, assigned to viewer_assigned
    meter_token: str
    # A viewer whom the assignment rows assign (so "viewer" keeps no assignment).
    target: Account
    http: httpx.AsyncClient

    @property
    def admin(self) -> Account:
        return self.accounts["admin"]

    async def fresh_meter(self) -> str:
        meter = await create_meter(self.http, self.admin, self.site_id)
        return str(meter["meterId"])


Metadata = tuple[tuple[str, str], ...]
if TYPE_CHECKING:  # the async stub class exists only in the type stubs
    Stub = devices_pb2_grpc.DeviceServiceAsyncStub
    Call = Callable[[Stub, World, Metadata], Awaitable[object]]


def new_meter(site_id: str) -> devices_pb2.Meter:
    return devices_pb2.Meter(
        site_id=site_id,
        serial_number=unique_serial(),
        commodity=devices_pb2.COMMODITY_GAS,
        unit="m3",
        register_type=devices_pb2.REGISTER_TYPE_CUMULATIVE,
    )


async def delete_fresh_site(stub: Stub, world: World, metadata: Metadata) -> object:
    site = await create_site(world.http, world.admin, name="Empty site")
    return await stub.DeleteSite(
        devices_pb2.DeleteSiteRequest(site_id=site["siteId"]), metadata=metadata
    )


async def delete_fresh_meter(stub: Stub, world: World, metadata: Metadata) -> object:
    meter_id = await world.fresh_meter()
    return await stub.DeleteMeter(
        devices_pb2.DeleteMeterRequest(meter_id=meter_id), metadata=metadata
    )


async def delete_fresh_token(stub: Stub, world: World, metadata: Metadata) -> object:
    created = await create_token(world.http, world.admin, world.meter_id)
    return await stub.DeleteMeterToken(
        devices_pb2.DeleteMeterTokenRequest(
            meter_id=world.meter_id, token_id=created["meterToken"]["tokenId"]
        ),
        metadata=metadata,
    )


async def delete_fresh_ingest_key(stub: Stub, world: World, metadata: Metadata) -> object:
    response = await world.http.post(
        "/v1/ingest-keys", headers=world.admin.headers, json={"displayName": "head-end"}
    )
    assert response.status_code == 200, response.text
    key_id = response.json()["ingestKey"]["ingestKeyId"]
    return await stub.DeleteIngestKey(
        devices_pb2.DeleteIngestKeyRequest(ingest_key_id=key_id), metadata=metadata
    )


async def assign_fresh_meter(stub: Stub, world: World, metadata: Metadata) -> object:
    meter_id = await world.fresh_meter()
    return await stub.CreateMeterAssignee(
        devices_pb2.CreateMeterAssigneeRequest(meter_id=meter_id, user_id=world.target.user_id),
        metadata=metadata,
    )


async def unassign_fresh_meter(stub: Stub, world: World, metadata: Metadata) -> object:
    meter_id = await world.fresh_meter()
    viewer = world.target.user_id
    await assign(world.http, world.admin, meter_id, viewer)
    return await stub.DeleteMeterAssignee(
        devices_pb2.DeleteMeterAssigneeRequest(meter_id=meter_id, user_id=viewer),
        metadata=metadata,
    )


def import_request(site_id: str) -> devices_pb2.ImportMetersRequest:
    csv = f"serial_number,commodity,unit,register_type\n{unique_serial()},water,m3,cumulative\n"
    return devices_pb2.ImportMetersRequest(
        csv=httpbody_pb2.HttpBody(content_type="text/csv", data=csv.encode()),
        site_id=site_id,
    )


# RPC → (how to call it, expected code for each caller in CALLERS order).
MATRIX: dict[str, tuple[Call, tuple[grpc.StatusCode, ...]]] = {
    "CreateSite": (
        lambda s, w, m: s.CreateSite(
            devices_pb2.CreateSiteRequest(
                site=devices_pb2.Site(name="Plant", time_zone="Europe/Paris")
            ),
            metadata=m,
        ),
        CREATE_OWN,
    ),
    "GetSite": (
        lambda s, w, m: s.GetSite(devices_pb2.GetSiteRequest(site_id=w.site_id), metadata=m),
        READ_ASSIGNED,
    ),
    "ListSites": (lambda s, w, m: s.ListSites(devices_pb2.ListSitesRequest(), metadata=m), LIST),
    "UpdateSite": (
        lambda s, w, m: s.UpdateSite(
            devices_pb2.UpdateSiteRequest(
                site=devices_pb2.Site(site_id=w.site_id, address="1 Main Street"),
                update_mask=field_mask_pb2.FieldMask(paths=["address"]),
            ),
            metadata=m,
        ),
        MANAGE,
    ),
    "DeleteSite": (delete_fresh_site, MANAGE),
    "CreateMeter": (
        lambda s, w, m: s.CreateMeter(
            devices_pb2.CreateMeterRequest(meter=new_meter(w.site_id)), metadata=m
        ),
        MANAGE,
    ),
    "GetMeter": (
        lambda s, w, m: s.GetMeter(devices_pb2.GetMeterRequest(meter_id=w.meter_id), metadata=m),
        READ_ASSIGNED,
    ),
    "ListMeters": (
        lambda s, w, m: s.ListMeters(devices_pb2.ListMetersRequest(), metadata=m),
        LIST,
    ),
    "UpdateMeter": (
        lambda s, w, m: s.UpdateMeter(
            devices_pb2.UpdateMeterRequest(
                meter=devices_pb2.Meter(meter_id=w.meter_id, name="Renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=m,
        ),
        MANAGE,
    ),
    "DeleteMeter": (delete_fresh_meter, MANAGE),
    "ImportMeters": (
        lambda s, w, m: s.ImportMeters(import_request(w.site_id), metadata=m),
        MANAGE,
    ),
    "CreateMeterToken": (
        lambda s, w, m: s.CreateMeterToken(
            devices_pb2.CreateMeterTokenRequest(meter_id=w.meter_id), metadata=m
        ),
        MANAGE,
    ),
    "ListMeterTokens": (
        lambda s, w, m: s.ListMeterTokens(
            devices_pb2.ListMeterTokensRequest(meter_id=w.meter_id), metadata=m
        ),
        MANAGE,
    ),
    "DeleteMeterToken": (delete_fresh_token, MANAGE),
    "CreateIngestKey": (
        # Restricted to the first organization's site: NOT_FOUND for the other admin.
        lambda s, w, m: s.CreateIngestKey(
            devices_pb2.CreateIngestKeyRequest(
                ingest_key=devices_pb2.IngestKey(display_name="SCADA", site_id=w.site_id)
            ),
            metadata=m,
        ),
        MANAGE,
    ),
    "ListIngestKeys": (
        lambda s, w, m: s.ListIngestKeys(devices_pb2.ListIngestKeysRequest(), metadata=m),
        CREATE_OWN,
    ),
    "DeleteIngestKey": (delete_fresh_ingest_key, MANAGE),
    "CreateMeterAssignee": (assign_fresh_meter, MANAGE),
    "DeleteMeterAssignee": (unassign_fresh_meter, MANAGE),
    "ListMeterAssignees": (
        lambda s, w, m: s.ListMeterAssignees(
            devices_pb2.ListMeterAssigneesRequest(meter_id=w.meter_id), metadata=m
        ),
        (UNAUTHENTICATED, NOT_FOUND, DENIED, DENIED, OK, OK, OK),
    ),
    # Internal for telemetry: the credential is the authentication, whoever calls.
    "AuthenticateCredential": (
        lambda s, w, m: s.AuthenticateCredential(
            devices_pb2.AuthenticateCredentialRequest(credential=w.meter_token), metadata=m
        ),
        (OK,) * 7,
    ),
}


def test_every_rpc_has_a_row() -> None:
    service = devices_pb2.DESCRIPTOR.services_by_name["DeviceService"]
    assert set(MATRIX) == {method.name for method in service.methods}


@pytest.fixture(scope="module")
async def world(mesh: Mesh) -> AsyncIterator[World]:
    async with gateway_client(mesh) as http:
        admin = await register(http, "Matrix Org")
        other = await register(http, "Other Org")
        accounts = {"admin": admin, "other_admin": other}
        for role in ("viewer", "operator", "manager"):
            accounts[role] = await add_user(http, admin, f"ROLE_{role.upper()}")
        accounts["viewer_assigned"] = await add_user(http, admin, "ROLE_VIEWER")
        site = await create_site(http, admin)
        meter = await create_meter(http, admin, site["siteId"])
        await assign(http, admin, meter["meterId"], accounts["viewer_assigned"].user_id)
        token = await create_token(http, admin, meter["meterId"])
        target = await add_user(http, admin, "ROLE_VIEWER")
        yield World(accounts, site["siteId"], meter["meterId"], token["token"], target, http)


@pytest.mark.parametrize("method", sorted(MATRIX))
async def test_permission_matrix(
    method: str, world: World, gateway_channel: grpc.aio.Channel
) -> None:
    call, expected = MATRIX[method]
    stub = devices_pb2_grpc.DeviceServiceStub(gateway_channel)
    for caller, code in zip(CALLERS, expected, strict=True):
        token = "" if caller == "anonymous" else world.accounts[caller].access_token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            await call(stub, world, metadata)
            actual = OK
        except grpc.aio.AioRpcError as error:
            actual = error.code()
        assert actual == code, f"{method} as {caller}: expected {code.name}, got {actual.name}"


async def test_purging_a_meter_is_for_admins_only(
    world: World, gateway_channel: grpc.aio.Channel
) -> None:
    stub = devices_pb2_grpc.DeviceServiceStub(gateway_channel)
    meter_id = await world.fresh_meter()
    request = devices_pb2.DeleteMeterRequest(meter_id=meter_id, force=True)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.DeleteMeter(request, metadata=world.accounts["manager"].metadata)
    assert denied.value.code() == DENIED
    await stub.DeleteMeter(request, metadata=world.admin.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetMeter(
            devices_pb2.GetMeterRequest(meter_id=meter_id), metadata=world.admin.metadata
        )
    assert gone.value.code() == NOT_FOUND


async def test_a_viewer_sees_exactly_their_meters_and_sites(world: World) -> None:
    http = world.http
    other_site = await create_site(http, world.admin, name="Elsewhere")
    await create_meter(http, world.admin, other_site["siteId"])
    for name, expected in (("viewer_assigned", [world.meter_id]), ("viewer", [])):
        account = world.accounts[name]
        meters = (await http.get("/v1/meters", headers=account.headers)).json()["meters"]
        assert [meter["meterId"] for meter in meters] == expected
        sites = (await http.get("/v1/sites", headers=account.headers)).json()["sites"]
        assert [site["siteId"] for site in sites] == ([world.site_id] if expected else [])
    hidden = await http.get(
        f"/v1/sites/{other_site['siteId']}", headers=world.accounts["viewer_assigned"].headers
    )
    assert hidden.status_code == 404
    # An operator sees the whole organization; the other organization sees none of it.
    everything = (await http.get("/v1/meters", headers=world.accounts["operator"].headers)).json()
    assert len(everything["meters"]) >= 2
    theirs = (await http.get("/v1/meters", headers=world.accounts["other_admin"].headers)).json()
    assert all(
        m["organizationId"] == world.accounts["other_admin"].organization_id
        for m in theirs["meters"]
    )
