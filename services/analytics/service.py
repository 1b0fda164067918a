"""Wires the analytics service into the kernel: its config, streams, servicer and background
work (the rollup consumer of telemetry.readings.committed, the follower of the registry's
events, the outbox relay, the repricing consumer of analytics.pricing.changed and the
resumption of interrupted rebuilds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import grpc
import nats.errors
from nats.aio.msg import Msg

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.analytics import SERVICE_INFO
from services.analytics.config import AnalyticsConfig
from services.analytics.domain import Analytics
from services.analytics.events import (
    ANALYTICS_STREAM,
    DEVICE_EVENTS,
    DEVICES_STREAM,
    PRICING_CHANGED,
    READINGS_COMMITTED,
    TELEMETRY_STREAM,
)
from services.analytics.maintenance import RollupMaintainer
from services.analytics.models import OUTBOX
from services.analytics.pricing import Repricer
from services.analytics.servicer import ACCESS, AnalyticsServicer
from services.analytics.tariff_catalog import TariffCatalog
from services.kernel.errors import Unavailable
from services.kernel.messaging import Consumer, run_consumer
from services.kernel.outbox import Outbox
from services.kernel.registry import DeviceRegistry
from services.kernel.server import Kernel, Registration, ServiceDefinition


async def setup(kernel: Kernel) -> Registration:
    config = kernel.config
    assert isinstance(config, AnalyticsConfig)
    devices = DeviceRegistry(config.devices_address, config.meter_cache_seconds)
    domain = Analytics(kernel.database, devices)
    outbox = Outbox(kernel.database, OUTBOX, kernel.messaging)
    catalog = TariffCatalog(kernel.database, outbox, devices)
    maintainer = RollupMaintainer(kernel.database, outbox)
    repricer = Repricer(kernel.database, maintainer.recompute_meter)

    async def apply_readings(message: Msg) -> None:
        await maintainer.on_readings_committed(message)
        outbox.wake()  # anomalies found

    async def apply_readings_batch(messages: Sequence[Msg]) -> None:
        await maintainer.on_readings_batch(messages)
        outbox.wake()

    async def apply_device_event(message: Msg) -> None:
        await maintainer.on_device_event(message)

    # Durable, shared by every replica: each event is applied once per service, not per process
    # (the tables are shared). Meters and sites come first in time, but the two consumers are
    # independent: a reading event for a meter not yet known is retried with backoff.
    # Batches of events are applied in one transaction (the buckets of all their meters at
    # once); that is what lets the rollups keep up with ingest.
    rollup_consumer = Consumer(
        stream=TELEMETRY_STREAM.name,
        durable="analytics-rollups",
        subject=READINGS_COMMITTED,
        handler=apply_readings,
        batch=256,
        batch_handler=apply_readings_batch,
        gather_seconds=0.25,
        # Two batches in flight: one computes while the other waits on PostgreSQL. Batches
        # of the same meters serialise on its lock; site sums are written in key order.
        concurrency=2,
    )
    device_consumer = Consumer(
        stream=DEVICES_STREAM.name,
        durable="analytics-devices",
        subject=DEVICE_EVENTS,
        handler=apply_device_event,
    )

    # One message at a time: repricing a meter's history can take a while (it reports
    # progress), and fetched messages waiting behind it would time out and be redelivered.
    pricing_consumer = Consumer(
        stream=ANALYTICS_STREAM.name,
        durable="analytics-pricing",
        subject=PRICING_CHANGED,
        handler=repricer.on_pricing_changed,
        batch=1,
    )

    async def rollup_status() -> analytics_pb2.RollupStatus:
        stats = maintainer.stats
        status = analytics_pb2.RollupStatus(
            applied_events=stats.applied_events,
            applied_readings=stats.applied_readings,
            rebuilding_meters=await maintainer.rebuilding(),
        )
        status.last_lag.FromTimedelta(timedelta(seconds=stats.last_lag_seconds))
        if stats.last_apply_time is not None:
            status.last_apply_time.FromDatetime(stats.last_apply_time)
        try:
            info = await kernel.messaging.jetstream.consumer_info(
                TELEMETRY_STREAM.name, rollup_consumer.durable
            )
        except (nats.errors.Error, RuntimeError) as error:
            raise Unavailable(f"NATS is unavailable ({error}); retry") from error
        status.pending_events = (info.num_pending or 0) + (info.num_ack_pending or 0)
        return status

    def add_servicer(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(domain, catalog, rollup_status), server
        )

    return Registration(
        servicers=[add_servicer],
        access=ACCESS,
        background=[
            lambda: run_consumer(kernel.messaging, rollup_consumer),
            lambda: run_consumer(kernel.messaging, device_consumer),
            outbox.run,
            lambda: run_consumer(kernel.messaging, pricing_consumer),
            maintainer.resume_rebuilds,
        ],
        on_stop=[devices.close],
    )


DEFINITION = ServiceDefinition(
    info=SERVICE_INFO,
    load_config=AnalyticsConfig.from_env,
    setup=setup,
    streams=(TELEMETRY_STREAM, DEVICES_STREAM, ANALYTICS_STREAM),
)
