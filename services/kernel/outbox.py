"""Transactional outbox: events are written in the same transaction as the change they
describe and published to JetStream after commit, with Nats-Msg-Id so a retried publish is
stored once. Nothing is lost if NATS is down at commit time or the process dies before
publishing: the relay picks the rows up again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from services.kernel.context import current_trace
from services.kernel.database import Database
from services.kernel.messaging import Messaging

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table, in the service's own schema (taken from its MetaData)."""
    return Table(
        "outbox",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("subject", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("publish_time", DateTime(timezone=True)),
        Index(
            "outbox_unpublished",
            "create_time",
            postgresql_where=Column("publish_time").is_(None),
        ),
    )


def event_headers(event: Message, message_id: str) -> dict[str, str]:
    headers = {
        "Nats-Msg-Id": message_id,
        "Content-Type": "application/json",
        "Energymesh-Event-Type": event.DESCRIPTOR.full_name,
    }
    trace = current_trace.get()
    if trace is not None:
        headers["traceparent"] = trace.traceparent
    return headers


class Outbox:
    def __init__(
        self,
        database: Database,
        table: Table,
        messaging: Messaging,
        gather_seconds: float = 0.0,
        batch: int = 200,
    ) -> None:
        """`gather_seconds`: after a wake-up, the relay waits this long before publishing, so
        that the events of commits close together go out in one round (one transaction), for
        a service that commits many times a second."""
        self._database = database
        self._table = table
        self._messaging = messaging
        self._gather = gather_seconds
        self._batch = batch
        self._wakeup = asyncio.Event()
        self._pending = (
            select(table.c.id, table.c.subject, table.c.payload, table.c.headers)
            .where(table.c.publish_time.is_(None))
            .order_by(table.c.create_time)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        self._published = delete(table).where(table.c.id.in_(bindparam("ids", expanding=True)))

    async def add(
        self, session: AsyncSession, subject: str, event: Message, message_id: str | None = None
    ) -> None:
        """Queues an event in the caller's transaction. The payload is the event's proto3
        JSON; its type is in the Energymesh-Event-Type header."""
        message_id = message_id or str(uuid.uuid4())
        payload = json_format.MessageToJson(event, indent=None).encode()
        await session.execute(
            self._table.insert().values(
                id=message_id,
                subject=subject,
                payload=payload,
                headers=event_headers(event, message_id),
            )
        )

    def wake(self) -> None:
        """Call after a commit that added events, to publish them without waiting for a poll."""
        self._wakeup.set()

    async def run(self, poll_seconds: float = 0.5) -> None:
        await self._messaging.wait_ready()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), poll_seconds)
            if self._gather and self._wakeup.is_set():
                await asyncio.sleep(self._gather)
            self._wakeup.clear()
            try:
                # Until a round finds less than a full batch (events added meanwhile woke us).
                while await self.publish_pending() >= self._batch:
                    pass
            except Exception as exc:
                log.warning("outbox: publish failed, will retry (%s)", exc)
                await asyncio.sleep(1)

    async def publish_pending(self) -> int:
        """Publishes one batch of pending events; returns how many."""
        async with self._database.transaction() as session:
            rows = (await session.execute(self._pending)).all()
            if not rows:
                return 0
            js = self._messaging.jetstream
            # Sent one after another without waiting for each acknowledgement (one round trip
            # for the lot); all must be acknowledged before the rows go. If one fails, the
            # rows stay and are published again: Nats-Msg-Id makes JetStream store them once.
            await asyncio.gather(
                *(
                    js.publish(row.subject, row.payload, headers=row.headers, timeout=5)
                    for row in rows
                )
            )
            # Published rows are deleted, not kept: payloads may carry secrets (reset links)
            # that must not linger in the database. JetStream now holds the event.
            await session.execute(self._published, {"ids": [row.id for row in rows]})
        return len(rows)
