"""Events the devices service publishes and consumes.

Published (via the outbox, proto3 JSON, types in energymesh/devices/v1/events.proto) on stream
DEVICES: devices.site.{created,updated,deleted}, devices.meter.{created,updated,
decommissioned,purged,assignee_added,assignee_removed,connectivity_changed},
devices.credential.revoked; and energymesh.auth.v1.AuditEvent on audit.devices.<what> (stream
AUDIT, stored by auth).

Consumed: telemetry.readings.committed (stream TELEMETRY), which the telemetry service
publishes after it commits a batch of readings. Its JSON payload (proto3 JSON names):

    {"organizationId": "…", "meterId": "…",
     "firstTime": "2026-11-24T10:00:00Z", "lastTime": "2026-11-24T10:15:00Z",
     "count": 4, "batchIds": ["…"]}

Only organizationId, meterId and lastTime are used: they move the meter's last_seen_time
forward (never back, so redeliveries and out-of-order batches are harmless).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import field_mask_pb2, struct_pb2

from energymesh.auth.v1 import auth_pb2
from energymesh.devices.v1 import devices_pb2, events_pb2
from services.devices.models import IngestKey, Meter, MeterToken, Site
from services.devices.resources import (
    CONNECTIVITIES,
    duration,
    meter_to_proto,
    optional_timestamp,
    proto_value,
    site_to_proto,
)
from services.devices.validation import Connectivity
from services.kernel.messaging import Stream
from services.kernel.protos import timestamp

SITE_CREATED = "devices.site.created"
SITE_UPDATED = "devices.site.updated"
SITE_DELETED = "devices.site.deleted"
METER_CREATED = "devices.meter.created"
METER_UPDATED = "devices.meter.updated"
METER_DECOMMISSIONED = "devices.meter.decommissioned"
METER_PURGED = "devices.meter.purged"
METER_ASSIGNEE_ADDED = "devices.meter.assignee_added"
METER_ASSIGNEE_REMOVED = "devices.meter.assignee_removed"
METER_CONNECTIVITY_CHANGED = "devices.meter.connectivity_changed"
CREDENTIAL_REVOKED = "devices.credential.revoked"
READINGS_COMMITTED = "telemetry.readings.committed"

DEVICES_STREAM = Stream("DEVICES", ("devices.>",))
# The same declaration as auth's (services/auth/events.py): declaring a stream is idempotent
# only when every service declares it identically.
AUDIT_STREAM = Stream("AUDIT", ("audit.>",), max_age_seconds=30 * 86400)
# Owned by the telemetry service, declared here too (identically: keep them in step) so that
# this service's consumer can bind before telemetry has ever started.
TELEMETRY_STREAM = Stream("TELEMETRY", ("telemetry.>",))

METER_TOKEN = devices_pb2.AuthenticateCredentialResponse.KIND_METER_TOKEN
INGEST_KEY = devices_pb2.AuthenticateCredentialResponse.KIND_INGEST_KEY


def site_created(site: Site) -> events_pb2.SiteCreated:
    return events_pb2.SiteCreated(site=site_to_proto(site))


def site_updated(site: Site, changed: list[str]) -> events_pb2.SiteUpdated:
    return events_pb2.SiteUpdated(
        site=site_to_proto(site), update_mask=field_mask_pb2.FieldMask(paths=changed)
    )


def site_deleted(site: Site) -> events_pb2.SiteDeleted:
    return events_pb2.SiteDeleted(site_id=site.id, organization_id=site.organization_id)


def meter_created(meter: Meter, now: datetime) -> events_pb2.MeterCreated:
    return events_pb2.MeterCreated(meter=meter_to_proto(meter, now))


def meter_updated(meter: Meter, changed: list[str], now: datetime) -> events_pb2.MeterUpdated:
    return events_pb2.MeterUpdated(
        meter=meter_to_proto(meter, now), update_mask=field_mask_pb2.FieldMask(paths=changed)
    )


def meter_decommissioned(meter: Meter, now: datetime) -> events_pb2.MeterDecommissioned:
    return events_pb2.MeterDecommissioned(meter=meter_to_proto(meter, now))


def meter_purged(meter: Meter) -> events_pb2.MeterPurged:
    return events_pb2.MeterPurged(meter_id=meter.id, organization_id=meter.organization_id)


def assignee_changed(
    organization_id: str, meter_id: str, user_id: str
) -> events_pb2.MeterAssigneeChanged:
    return events_pb2.MeterAssigneeChanged(
        organization_id=organization_id, meter_id=meter_id, user_id=user_id
    )


def credential_revoked(credential: MeterToken | IngestKey) -> events_pb2.CredentialRevoked:
    if isinstance(credential, MeterToken):
        return events_pb2.CredentialRevoked(
            organization_id=credential.organization_id,
            kind=METER_TOKEN,
            credential_id=credential.id,
            prefix=credential.prefix,
            meter_id=credential.meter_id,
        )
    return events_pb2.CredentialRevoked(
        organization_id=credential.organization_id,
        kind=INGEST_KEY,
        credential_id=credential.id,
        prefix=credential.prefix,
    )


def connectivity_changed(
    meter: Meter, previous: Connectivity, current: Connectivity, now: datetime
) -> events_pb2.MeterConnectivityChanged:
    return events_pb2.MeterConnectivityChanged(
        organization_id=meter.organization_id,
        meter_id=meter.id,
        site_id=meter.site_id,
        serial_number=meter.serial_number,
        name=meter.name,
        connectivity=proto_value(CONNECTIVITIES, current),  # type: ignore[arg-type]
        previous_connectivity=proto_value(CONNECTIVITIES, previous),  # type: ignore[arg-type]
        last_seen_time=optional_timestamp(meter.last_seen_time),
        expected_interval=duration(meter.expected_interval_seconds),
        change_time=timestamp(now),
    )


def audit_event(
    *,
    organization_id: str,
    actor_user_id: str,
    action: str,
    target: str,
    client_address: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> auth_pb2.AuditEvent:
    """An audit record for auth's trail, published on audit_subject(action)."""
    struct = struct_pb2.Struct()
    struct.update(details or {})
    return auth_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        organization_id=organization_id,
        actor_user_id=actor_user_id,
        action=action,
        target=target,
        service="devices",
        client_address=client_address,
        details=struct,
        event_time=timestamp(now),
    )


def audit_subject(action: str) -> str:
    """ "devices.meter.created" → "audit.devices.meter.created"."""
    return f"audit.{action}"


@dataclass(frozen=True)
class ReadingsCommitted:
    organization_id: str
    meter_id: str
    last_time: datetime


def readings_committed_from_json(data: bytes) -> ReadingsCommitted:
    """Parses a telemetry.readings.committed payload; ValueError when it is malformed."""
    try:
        payload = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    organization_id = payload.get("organizationId")
    meter_id = payload.get("meterId")
    last_time = payload.get("lastTime")
    if not (
        isinstance(organization_id, str)
        and isinstance(meter_id, str)
        and isinstance(last_time, str)
        and organization_id
        and meter_id
        and last_time
    ):
        raise ValueError("organizationId, meterId and lastTime are required strings")
    try:
        moment = datetime.fromisoformat(last_time)
    except ValueError as error:
        raise ValueError(f"lastTime is not an RFC 3339 time: {last_time!r}") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ReadingsCommitted(organization_id, meter_id, moment.astimezone(UTC))
