"""Audit events other services publish on audit.> are stored once by auth; malformed ones
go to the dead-letter subject instead of blocking the consumer."""

from __future__ import annotations

import json
import uuid

import httpx
from nats.aio.client import Client

from tests.e2e.helpers import Account, eventually, register


async def audit_actions(http: httpx.AsyncClient, admin: Account) -> list[str]:
    response = await http.get("/v1/audit-events?page_size=200", headers=admin.headers)
    return [event["action"] for event in response.json()["auditEvents"]]


async def test_published_audit_events_are_stored_once(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http)
    js = nats_client.jetstream()
    event_id = str(uuid.uuid4())
    event = {
        "eventId": event_id,
        "organizationId": admin.organization_id,
        "actorUserId": admin.user_id,
        "action": "devices.meter.created",
        "target": "meters/m-1",
        "service": "devices",
        "details": {"serialNumber": "SN-1"},
        "eventTime": "2026-11-24T10:00:00Z",
    }
    payload = json.dumps(event).encode()
    # Published twice under different message ids: the consumer, not JetStream, must dedupe.
    for _ in range(2):
        await js.publish(
            "audit.devices.meter.created", payload, headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )
    malformed = await js.publish("audit.devices.meter.created", b"{not json")
    assert malformed.seq > 0

    async def arrived() -> bool:
        return "devices.meter.created" in await audit_actions(http, admin)

    await eventually(arrived)
    dead = await js.subscribe("deadletter.audit.auth-audit", ordered_consumer=True)
    letter = await dead.next_msg(timeout=20)
    assert letter.data == b"{not json"
    await dead.unsubscribe()
    response = await http.get("/v1/audit-events?action_prefix=devices.", headers=admin.headers)
    stored = response.json()["auditEvents"]
    assert [e["eventId"] for e in stored] == [event_id]
    assert stored[0]["details"] == {"serialNumber": "SN-1"}
    assert stored[0]["service"] == "devices"
