"""Wires the telemetry service into the kernel: its config, streams, servicer and background
work (the group-commit writer, the outbox relay, partitions ahead, the device-event follower,
batch-id retention)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc
from nats.js.api import DeliverPolicy

from energymesh.telemetry.v1 import telemetry_pb2_grpc
from services.kernel.outbox import Outbox
from services.kernel.registry import DeviceRegistry
from services.kernel.server import Kernel, Registration, ServiceDefinition, grpc_jwks
from services.kernel.tokens import KeySet, TokenVerifier
from services.telemetry import SERVICE_INFO
from services.telemetry.access import Access, MeterCatalog
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import Telemetry
from services.telemetry.events import (
    CREDENTIAL_REVOKED,
    DEVICES_STREAM,
    METER_EVENTS,
    TELEMETRY_STREAM,
)
from services.telemetry.ingest import GroupCommitWriter, IngestBuffer
from services.telemetry.models import OUTBOX
from services.telemetry.partitions import Partitions
from services.telemetry.servicer import ACCESS, TelemetryServicer

log = logging.getLogger(__name__)

# Batch ids are remembered this long: a client resending after a longer outage still stores
# nothing twice (readings are unique per meter and time), it only counts duplicates.
BATCH_RETENTION = timedelta(days=30)
# HTTP/2 receive window per stream: what the transport may hold of a stream's unread data.
STREAM_WINDOW_BYTES = 256 * 1024
# Events of the commits within this time are published in one round of the outbox relay.
OUTBOX_GATHER_SECONDS = 0.1


async def setup(kernel: Kernel) -> Registration:
    config = kernel.config
    assert isinstance(config, TelemetryConfig)
    # Ingest commits up to 20 groups a second (one-reading messages), each with events.
    outbox = Outbox(kernel.database, OUTBOX, kernel.messaging, gather_seconds=OUTBOX_GATHER_SECONDS)
    partitions = Partitions(kernel.database, config.partitions_ahead_months)
    buffer = IngestBuffer(config.buffer_limit_bytes, config.stream_buffer_limit_bytes)
    writer = GroupCommitWriter(
        config.database_url, outbox, partitions, buffer, config.max_group_readings
    )
    devices = DeviceRegistry(config.devices_address, config.credential_cache_seconds)
    verifier = TokenVerifier(
        KeySet(grpc_jwks(config.auth_address)),
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
    )
    access = Access(devices, verifier, MeterCatalog(), config.credential_cache_seconds)
    domain = Telemetry(kernel.database, access, buffer, writer, config)

    async def follow(subject: str) -> None:
        """Every process follows the registry's events itself (its caches are its own)."""
        await kernel.messaging.wait_ready()
        if subject == METER_EVENTS:
            await domain.load_meters()
        policy = DeliverPolicy.NEW if subject == CREDENTIAL_REVOKED else DeliverPolicy.ALL
        while True:
            try:
                subscription = await kernel.messaging.jetstream.subscribe(
                    subject, ordered_consumer=True, deliver_policy=policy
                )
                async for message in subscription.messages:
                    try:
                        await domain.on_device_event(message)
                    except Exception:
                        log.exception("could not apply %s", message.subject)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following %s failed (%s); resubscribing", subject, exc)
                await asyncio.sleep(1)

    async def retention() -> None:
        while True:
            try:
                await domain.forget_old_batches(BATCH_RETENTION)
            except Exception as exc:
                log.warning("batch retention failed (%s)", exc)
            await asyncio.sleep(3600)

    def add_servicer(server: grpc.aio.Server) -> None:
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(TelemetryServicer(domain), server)

    return Registration(
        servicers=[add_servicer],
        access=ACCESS,
        background=[
            writer.run,
            outbox.run,
            partitions.run,
            lambda: follow(CREDENTIAL_REVOKED),
            lambda: follow(METER_EVENTS),
            retention,
        ],
        on_stop=[devices.close, writer.close],
        # Backpressure must reach the client: without this, grpc's bandwidth-delay probing
        # grows each stream's HTTP/2 window to megabytes, and a stream the service has
        # stopped reading keeps filling the process's memory below the application.
        server_options=[
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
        ],
    )


DEFINITION = ServiceDefinition(
    info=SERVICE_INFO,
    load_config=TelemetryConfig.from_env,
    setup=setup,
    streams=(TELEMETRY_STREAM, DEVICES_STREAM),
)
