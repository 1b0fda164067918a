"""Meter tokens and ingest keys: shown once, stored hashed, authenticated by the internal
AuthenticateCredential RPC (what telemetry calls), and refused as soon as they are revoked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from nats.aio.client import Client

from energymesh.devices.v1 import devices_pb2, devices_pb2_grpc
from energymesh.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.e2e.device_steps import (
    create_meter,
    create_site,
    create_token,
    rfc3339,
)
from tests.e2e.helpers import eventually, find_event, register

KIND = devices_pb2.AuthenticateCredentialResponse


async def authenticate(
    channel: grpc.aio.Channel, credential: str
) -> devices_pb2.AuthenticateCredentialResponse:
    stub = devices_pb2_grpc.DeviceServiceStub(channel)
    return await stub.AuthenticateCredential(
        devices_pb2.AuthenticateCredentialRequest(credential=credential)
    )


async def refused(channel: grpc.aio.Channel, credential: str) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await authenticate(channel, credential)
    return error.value.code()


async def test_meter_token_is_shown_once_and_revocation_is_immediate(
    http: httpx.AsyncClient, devices_channel: grpc.aio.Channel, nats_client: Client
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    created = await create_token(http, admin, meter["meterId"])
    secret, token = created["token"], created["meterToken"]
    assert secret.startswith(f"{token['prefix']}_")
    assert token["prefix"].startswith("emt_")

    listed = await http.get(f"/v1/meters/{meter['meterId']}/tokens", headers=admin.headers)
    assert listed.json()["meterTokens"][0]["tokenId"] == token["tokenId"]
    assert secret not in listed.text

    found = await authenticate(devices_channel, secret)
    assert found.kind == KIND.KIND_METER_TOKEN
    assert found.organization_id == admin.organization_id
    assert list(found.meter_ids) == [meter["meterId"]]
    assert found.credential_id == token["tokenId"]
    used = await http.get(f"/v1/meters/{meter['meterId']}/tokens", headers=admin.headers)
    assert "lastUsedTime" in used.json()["meterTokens"][0]

    # A guessed secret with a real prefix, a malformed one, an empty one.
    assert (
        await refused(devices_channel, token["prefix"] + "_guess")
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await refused(devices_channel, "emt_nonsense") == grpc.StatusCode.UNAUTHENTICATED
    assert await refused(devices_channel, "") == grpc.StatusCode.INVALID_ARGUMENT

    revoked = await http.delete(
        f"/v1/meters/{meter['meterId']}/tokens/{token['tokenId']}", headers=admin.headers
    )
    assert revoked.status_code == 200, revoked.text
    assert await refused(devices_channel, secret) == grpc.StatusCode.UNAUTHENTICATED
    listed = await http.get(f"/v1/meters/{meter['meterId']}/tokens", headers=admin.headers)
    assert listed.json()["meterTokens"] == []
    again = await http.delete(
        f"/v1/meters/{meter['meterId']}/tokens/{token['tokenId']}", headers=admin.headers
    )
    assert again.status_code == 404
    event = await find_event(
        nats_client,
        "devices.credential.revoked",
        lambda e: e.get("credentialId") == token["tokenId"],
    )
    assert event["kind"] == "KIND_METER_TOKEN"
    assert event["meterId"] == meter["meterId"]


async def test_tokens_expire_and_die_with_their_meter(
    http: httpx.AsyncClient, devices_channel: grpc.aio.Channel
) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    url = f"/v1/meters/{meter['meterId']}/tokens"
    past = rfc3339(datetime.now(UTC) - timedelta(minutes=1))
    expired = await http.post(url, headers=admin.headers, json={"expireTime": past})
    assert expired.status_code == 400
    soon = rfc3339(datetime.now(UTC) + timedelta(days=1))
    created = (await http.post(url, headers=admin.headers, json={"expireTime": soon})).json()
    assert (await authenticate(devices_channel, created["token"])).HasField("expire_time")

    await http.delete(f"/v1/meters/{meter['meterId']}", headers=admin.headers)
    assert await refused(devices_channel, created["token"]) == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_credentials_are_not_listed(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    tokens_url = f"/v1/meters/{meter['meterId']}/tokens"
    soon = rfc3339(datetime.now(UTC) + timedelta(seconds=1.5))
    later = rfc3339(datetime.now(UTC) + timedelta(days=1))
    expiring = await http.post(tokens_url, headers=admin.headers, json={"expireTime": soon})
    lasting = await http.post(tokens_url, headers=admin.headers, json={"expireTime": later})
    forever = await http.post(tokens_url, headers=admin.headers, json={})
    key_body = {"displayName": "head-end", "expireTime": soon}
    expiring_key = await http.post("/v1/ingest-keys", headers=admin.headers, json=key_body)
    lasting_key = await http.post(
        "/v1/ingest-keys", headers=admin.headers, json={"displayName": "SCADA"}
    )

    async def listed() -> tuple[list[str], list[str]]:
        tokens = (await http.get(tokens_url, headers=admin.headers)).json()
        keys = (await http.get("/v1/ingest-keys", headers=admin.headers)).json()
        return (
            [token["tokenId"] for token in tokens.get("meterTokens", [])],
            [key["ingestKeyId"] for key in keys.get("ingestKeys", [])],
        )

    def token_ids(*responses: httpx.Response) -> list[str]:
        return [response.json()["meterToken"]["tokenId"] for response in responses]

    def key_ids(*responses: httpx.Response) -> list[str]:
        return [response.json()["ingestKey"]["ingestKeyId"] for response in responses]

    assert await listed() == (
        token_ids(expiring, lasting, forever),
        key_ids(expiring_key, lasting_key),
    )

    async def expired() -> bool:
        return await listed() == (token_ids(lasting, forever), key_ids(lasting_key))

    await eventually(expired, wait_seconds=10)
    # An expired token can still be revoked, for the record.
    revoked = await http.delete(f"{tokens_url}/{token_ids(expiring)[0]}", headers=admin.headers)
    assert revoked.status_code == 200, revoked.text


async def test_ingest_keys_cover_their_organization_or_site(
    http: httpx.AsyncClient, devices_channel: grpc.aio.Channel
) -> None:
    admin = await register(http)
    north, south = await create_site(http, admin), await create_site(http, admin, name="South")
    on_north = await create_meter(http, admin, north["siteId"])
    on_south = await create_meter(http, admin, south["siteId"])
    retired = await create_meter(http, admin, south["siteId"])
    await http.delete(f"/v1/meters/{retired['meterId']}", headers=admin.headers)

    everywhere = await http.post(
        "/v1/ingest-keys", headers=admin.headers, json={"displayName": "Head-end"}
    )
    assert everywhere.status_code == 200, everywhere.text
    org_key = everywhere.json()
    assert org_key["key"].startswith("emk_")
    site_key = (
        await http.post(
            "/v1/ingest-keys",
            headers=admin.headers,
            json={"displayName": "South SCADA", "siteId": south["siteId"]},
        )
    ).json()

    found = await authenticate(devices_channel, org_key["key"])
    assert found.kind == KIND.KIND_INGEST_KEY
    assert set(found.meter_ids) == {on_north["meterId"], on_south["meterId"]}
    assert found.site_id == ""
    scoped = await authenticate(devices_channel, site_key["key"])
    assert list(scoped.meter_ids) == [on_south["meterId"]]
    assert scoped.site_id == south["siteId"]

    listed = (await http.get("/v1/ingest-keys", headers=admin.headers)).json()["ingestKeys"]
    assert {key["displayName"] for key in listed} == {"Head-end", "South SCADA"}
    assert org_key["key"] not in str(listed)
    missing_name = await http.post("/v1/ingest-keys", headers=admin.headers, json={})
    assert missing_name.status_code == 400

    # Deleting the site (once its meters are gone) revokes the keys restricted to it.
    await http.delete(f"/v1/meters/{on_south['meterId']}", headers=admin.headers)
    assert (await http.delete(f"/v1/sites/{south['siteId']}", headers=admin.headers)).is_success
    assert await refused(devices_channel, site_key["key"]) == grpc.StatusCode.UNAUTHENTICATED
    deleted = await http.delete(
        f"/v1/ingest-keys/{org_key['ingestKey']['ingestKeyId']}", headers=admin.headers
    )
    assert deleted.status_code == 200
    assert await refused(devices_channel, org_key["key"]) == grpc.StatusCode.UNAUTHENTICATED
    assert (await http.get("/v1/ingest-keys", headers=admin.headers)).json()["ingestKeys"] == []


async def test_credentials_are_not_reachable_over_rest(http: httpx.AsyncClient) -> None:
    # AuthenticateCredential has no REST binding: the transcoder knows no such path.
    response = await http.post(
        "/energymesh.devices.v1.DeviceService/AuthenticateCredential",
        json={"credential": "emt_x"},
    )
    assert response.status_code != 200


async def test_revoked_token_cannot_open_a_stream(
    http: httpx.AsyncClient,
    devices_channel: grpc.aio.Channel,
    gateway_channel: grpc.aio.Channel,
) -> None:
    """A revoked meter token is refused by devices and by telemetry when a stream opens."""
    admin = await register(http)
    site = await create_site(http, admin)
    meter = await create_meter(http, admin, site["siteId"])
    created = await create_token(http, admin, meter["meterId"])
    await http.delete(
        f"/v1/meters/{meter['meterId']}/tokens/{created['meterToken']['tokenId']}",
        headers=admin.headers,
    )
    assert await refused(devices_channel, created["token"]) == grpc.StatusCode.UNAUTHENTICATED
    batch = telemetry_pb2.ReadingBatch(batch_id="b1", time_unix_ms=[1], values=[1.0])

    async def one_batch() -> AsyncIterator[telemetry_pb2.ReadingBatch]:
        yield batch

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await telemetry_pb2_grpc.TelemetryServiceStub(gateway_channel).StreamReadings(
            one_batch(), metadata=(("authorization", f"Bearer {created['token']}"),)
        )
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
