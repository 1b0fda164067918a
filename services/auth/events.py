"""Events the auth service publishes and consumes.

Published (stream AUTH, via the outbox): auth.password_reset.requested,
auth.email_verification.requested. Consumed: audit.> (stream AUDIT), where every service
publishes energymesh.auth.v1.AuditEvent; auth stores them for GET /v1/audit-events."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format
from nats.aio.msg import Msg

from energymesh.auth.v1 import auth_pb2, events_pb2
from services.auth.models import AuditEvent, User
from services.kernel.messaging import PoisonMessage, Stream
from services.kernel.protos import timestamp

PASSWORD_RESET_REQUESTED = "auth.password_reset.requested"
EMAIL_VERIFICATION_REQUESTED = "auth.email_verification.requested"

# Kept one day: its events carry reset and verification links, which must not outlive the
# notification service's need for them.
AUTH_STREAM = Stream("AUTH", ("auth.>",), max_age_seconds=86400)
AUDIT_STREAM = Stream("AUDIT", ("audit.>",), max_age_seconds=30 * 86400)


def password_reset_requested(
    user: User, token: str, expire_time: datetime, *, invitation: bool
) -> events_pb2.PasswordResetRequested:
    return events_pb2.PasswordResetRequested(
        user_id=user.id,
        organization_id=user.organization_id,
        email=user.email,
        display_name=user.display_name,
        token=token,
        expire_time=timestamp(expire_time),
        invitation=invitation,
    )


def email_verification_requested(
    user: User, token: str, expire_time: datetime
) -> events_pb2.EmailVerificationRequested:
    return events_pb2.EmailVerificationRequested(
        user_id=user.id,
        organization_id=user.organization_id,
        email=user.email,
        display_name=user.display_name,
        token=token,
        expire_time=timestamp(expire_time),
    )


def audit_event_from_message(message: Msg) -> AuditEvent:
    """Parses an audit.> message (proto3 JSON of energymesh.auth.v1.AuditEvent)."""
    proto = auth_pb2.AuditEvent()
    try:
        json_format.Parse(message.data, proto, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise PoisonMessage(f"not an AuditEvent: {error}") from error
    headers = message.headers or {}
    event_id = proto.event_id or headers.get("Nats-Msg-Id", "")
    if not event_id or not proto.organization_id or not proto.action:
        raise PoisonMessage("event_id, organization_id and action are required")
    event_time = (
        proto.event_time.ToDatetime(tzinfo=UTC)
        if proto.HasField("event_time")
        else datetime.now(UTC)
    )
    return AuditEvent(
        event_id=event_id,
        organization_id=proto.organization_id,
        actor_user_id=proto.actor_user_id,
        action=proto.action,
        target=proto.target,
        service=proto.service or message.subject.split(".")[1],
        client_address=proto.client_address,
        details=json_format.MessageToDict(proto.details),
        event_time=event_time,
    )
