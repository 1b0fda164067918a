"""Wires the devices service into the kernel: its config, streams, servicer and background
work (outbox relay, the telemetry consumer, the connectivity monitor)."""

from __future__ import annotations

import grpc
from nats.aio.msg import Msg

from energymesh.devices.v1 import devices_pb2_grpc
from services.devices import SERVICE_INFO
from services.devices.config import DevicesConfig
from services.devices.domain import DevicesDomain
from services.devices.events import (
    AUDIT_STREAM,
    DEVICES_STREAM,
    READINGS_COMMITTED,
    TELEMETRY_STREAM,
    readings_committed_from_json,
)
from services.devices.models import OUTBOX
from services.devices.servicer import ACCESS, DevicesServicer
from services.devices.users import AuthUsers
from services.kernel.messaging import Consumer, PoisonMessage, run_consumer
from services.kernel.outbox import Outbox
from services.kernel.server import Kernel, Registration, ServiceDefinition


async def setup(kernel: Kernel) -> Registration:
    config = kernel.config
    assert isinstance(config, DevicesConfig)
    outbox = Outbox(kernel.database, OUTBOX, kernel.messaging)
    domain = DevicesDomain(kernel.database, outbox)
    users = AuthUsers(config.auth_address)

    async def record_readings(message: Msg) -> None:
        try:
            committed = readings_committed_from_json(message.data)
        except ValueError as error:
            raise PoisonMessage(str(error)) from error
        await domain.record_readings(committed)

    readings_consumer = Consumer(
        stream=TELEMETRY_STREAM.name,
        durable="devices-last-seen",
        subject=READINGS_COMMITTED,
        handler=record_readings,
    )

    def add_servicer(server: grpc.aio.Server) -> None:
        devices_pb2_grpc.add_DeviceServiceServicer_to_server(
            DevicesServicer(domain, users, config), server
        )

    return Registration(
        servicers=[add_servicer],
        access=ACCESS,
        background=[
            outbox.run,
            lambda: run_consumer(kernel.messaging, readings_consumer),
            lambda: domain.run_connectivity_monitor(config.connectivity_max_sleep_seconds),
        ],
        on_stop=[users.close],
    )


DEFINITION = ServiceDefinition(
    info=SERVICE_INFO,
    load_config=DevicesConfig.from_env,
    setup=setup,
    streams=(DEVICES_STREAM, AUDIT_STREAM, TELEMETRY_STREAM),
)
