"""Shared steps for the devices service's end-to-end tests: sites, meters, tokens, readings."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import psycopg
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from tests.e2e.helpers import Account, eventually

T = TypeVar("T")


def unique_serial(prefix: str = "SN") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


async def create_site(http: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    body = {"name": "Headquarters", "timeZone": "Europe/Berlin", **fields}
    response = await http.post("/v1/sites", headers=account.headers, json=body)
    assert response.status_code == 200, response.text
    site: dict[str, Any] = response.json()
    return site


def meter_body(site_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "siteId": site_id,
        "serialNumber": unique_serial(),
        "name": "Main incomer",
        "commodity": "COMMODITY_ELECTRICITY",
        "unit": "kWh",
        "registerType": "REGISTER_TYPE_CUMULATIVE",
        "expectedInterval": "900s",
        **fields,
    }


async def create_meter(
    http: httpx.AsyncClient, account: Account, site_id: str, **fields: Any
) -> dict[str, Any]:
    response = await http.post(
        "/v1/meters", headers=account.headers, json=meter_body(site_id, **fields)
    )
    assert response.status_code == 200, response.text
    meter: dict[str, Any] = response.json()
    return meter


async def assign(http: httpx.AsyncClient, admin: Account, meter_id: str, user_id: str) -> None:
    response = await http.post(
        f"/v1/meters/{meter_id}/assignees", headers=admin.headers, json={"userId": user_id}
    )
    assert response.status_code == 200, response.text


async def create_token(http: httpx.AsyncClient, admin: Account, meter_id: str) -> dict[str, Any]:
    response = await http.post(
        f"/v1/meters/{meter_id}/tokens", headers=admin.headers, json={"displayName": "logger"}
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def list_all_meters(
    http: httpx.AsyncClient, account: Account, query: str = "", page_size: int = 1000
) -> list[dict[str, Any]]:
    """Every page of GET /v1/meters?<query>."""
    meters: list[dict[str, Any]] = []
    token = ""
    while True:
        params = f"pageSize={page_size}&pageToken={token}" + (f"&{query}" if query else "")
        response = await http.get(f"/v1/meters?{params}", headers=account.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        meters.extend(body["meters"])
        token = body["nextPageToken"]
        if not token:
            return meters


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def publish_readings(
    nats_client: Client,
    organization_id: str,
    meter_id: str,
    last_time: datetime,
    *,
    count: int = 4,
) -> None:
    """What the telemetry service publishes after it committed a batch of readings."""
    payload = {
        "organizationId": organization_id,
        "meterId": meter_id,
        "firstTime": rfc3339(last_time),
        "lastTime": rfc3339(last_time),
        "count": count,
        "batchIds": [str(uuid.uuid4())],
    }
    await nats_client.jetstream().publish(
        "telemetry.readings.committed",
        json.dumps(payload).encode(),
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
    )


async def events_on(
    nats_client: Client, subject: str, predicate: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every event stored so far on a subject matching predicate."""
    js = nats_client.jetstream()
    subscription = await js.subscribe(
        subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[dict[str, Any]] = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            payload: dict[str, Any] = json.loads(message.data)
            if predicate(payload):
                found.append(payload)
    finally:
        await subscription.unsubscribe()


async def _devices_waits_on_a_lock(watcher: psycopg.AsyncConnection[Any]) -> bool:
    cursor = await watcher.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'energymesh-devices' AND wait_event_type = 'Lock'"
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def while_site_is_deleted(database_url: str, site_id: str, call: Awaitable[T]) -> T:
    """Runs `call` while another transaction deletes the site the way DeleteSite does (row
    locked FOR UPDATE, delete_time set), and commits that delete once `call` waits for it."""
    deleter = await psycopg.AsyncConnection.connect(database_url)
    watcher = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    task: asyncio.Future[T] | None = None
    try:
        await deleter.execute("SELECT 1 FROM devices.sites WHERE id = %s FOR UPDATE", (site_id,))
        await deleter.execute(
            "UPDATE devices.sites SET delete_time = now() WHERE id = %s", (site_id,)
        )
        task = asyncio.ensure_future(call)
        await eventually(lambda: _devices_waits_on_a_lock(watcher))
        await deleter.commit()
        return await task
    finally:
        if task is not None and not task.done():
            task.cancel()
        await deleter.close()
        await watcher.close()
