"""Wires the auth service into the kernel: its config, streams, servicer and background work."""

from __future__ import annotations

from datetime import timedelta

import grpc
from nats.aio.msg import Msg

from energymesh.auth.v1 import auth_pb2_grpc
from services.auth import SERVICE_INFO
from services.auth.config import AuthConfig
from services.auth.domain import AuthDomain
from services.auth.events import AUDIT_STREAM, AUTH_STREAM, audit_event_from_message
from services.auth.keys import Keyring
from services.auth.models import OUTBOX
from services.auth.servicer import ACCESS, AuthServicer
from services.kernel.messaging import Consumer, run_consumer
from services.kernel.outbox import Outbox
from services.kernel.server import Kernel, Registration, ServiceDefinition


async def setup(kernel: Kernel) -> Registration:
    config = kernel.config
    assert isinstance(config, AuthConfig)
    keyring = Keyring(
        kernel.database,
        config.key_encryption_secret,
        rotation=timedelta(seconds=config.signing_key_rotation_seconds),
        token_ttl=timedelta(seconds=config.access_token_ttl_seconds),
    )
    outbox = Outbox(kernel.database, OUTBOX, kernel.messaging)
    domain = AuthDomain(config, kernel.database, outbox, keyring)

    async def store_audit_event(message: Msg) -> None:
        await domain.store_audit_event(audit_event_from_message(message))

    audit_consumer = Consumer(
        stream=AUDIT_STREAM.name, durable="auth-audit", subject="audit.>", handler=store_audit_event
    )

    def add_servicer(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(domain), server)

    return Registration(
        servicers=[add_servicer],
        access=ACCESS,
        background=[outbox.run, lambda: run_consumer(kernel.messaging, audit_consumer)],
        caller_check=domain.authenticate,
        jwks=keyring.jwks,
    )


DEFINITION = ServiceDefinition(
    info=SERVICE_INFO,
    load_config=AuthConfig.from_env,
    setup=setup,
    streams=(AUTH_STREAM, AUDIT_STREAM),
)
