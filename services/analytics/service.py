"""Wires the analytics service into the kernel: its config, streams, servicer and background
work (the rollup consumer of telemetry.readings.committed, the follower of the registry's
events, the outbox relay and the repricing consumer of analytics.pricing.changed)."""

from __future__ import annotations

import grpc
from nats.aio.msg import Msg

from energymesh.analytics.v1 import analytics_pb2_grpc
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
from services.analytics.models import OUTBOX
from services.analytics.pricing import Repricer
from services.analytics.servicer import ACCESS, AnalyticsServicer
from services.analytics.tariff_catalog import TariffCatalog
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
    repricer = Repricer(kernel.database)

    async def apply_readings(message: Msg) -> None:
        await domain.on_readings_committed(message)

    async def apply_device_event(message: Msg) -> None:
        await domain.on_device_event(message)

    # Durable, shared by every replica: each event is applied once per service, not per process
    # (the tables are shared). Meters and sites come first in time, but the two consumers are
    # independent: a reading event for a meter not yet known is retried with backoff.
    rollup_consumer = Consumer(
        stream=TELEMETRY_STREAM.name,
        durable="analytics-rollups",
        subject=READINGS_COMMITTED,
        handler=apply_readings,
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

    def add_servicer(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(domain, catalog), server
        )

    return Registration(
        servicers=[add_servicer],
        access=ACCESS,
        background=[
            lambda: run_consumer(kernel.messaging, rollup_consumer),
            lambda: run_consumer(kernel.messaging, device_consumer),
            outbox.run,
            lambda: run_consumer(kernel.messaging, pricing_consumer),
        ],
        on_stop=[devices.close],
    )


DEFINITION = ServiceDefinition(
    info=SERVICE_INFO,
    load_config=AnalyticsConfig.from_env,
    setup=setup,
    streams=(TELEMETRY_STREAM, DEVICES_STREAM, ANALYTICS_STREAM),
)
