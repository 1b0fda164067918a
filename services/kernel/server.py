"""Service bootstrap: a factory builds the server from config and returns it with its bound
port; `main` is what each service's __main__ calls (`serve` or `migrate`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kernel import migrations
from services.kernel.config import ConfigError, KernelConfig
from services.kernel.database import Database
from services.kernel.health import HealthMonitor
from services.kernel.interceptors import CallerCheck, KernelInterceptor
from services.kernel.logging import configure_logging
from services.kernel.messaging import Messaging, Stream
from services.kernel.permissions import Permission
from services.kernel.service import ServiceInfo
from services.kernel.tokens import JwksFetcher, KeySet, TokenVerifier

log = logging.getLogger(__name__)


@dataclass
class Kernel:
    """The shared infrastructure handed to a service's setup function."""

    info: ServiceInfo
    config: KernelConfig
    database: Database
    messaging: Messaging


@dataclass(frozen=True)
class Registration:
    """What a service contributes to its server."""

    # Functions that add the service's servicers to the server (the generated add_*_to_server).
    servicers: Sequence[Callable[[grpc.aio.Server], None]]
    # Every RPC's full method name ("/pkg.Service/Method") → the permission it needs.
    access: Mapping[str, Permission]
    # Long-running tasks: outbox relay, consumers, schedulers.
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    caller_check: CallerCheck | None = None
    # Where public keys come from; defaults to auth's GetJwks over gRPC.
    jwks: JwksFetcher | None = None
    # Called on shutdown after the server stopped, before pools close.
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=tuple)
    # Extra grpc server channel arguments (e.g. HTTP/2 flow-control windows for streaming).
    server_options: Sequence[tuple[str, Any]] = ()


Setup = Callable[[Kernel], Awaitable[Registration]]


@dataclass(frozen=True)
class ServiceDefinition:
    info: ServiceInfo
    load_config: Callable[[], KernelConfig]
    setup: Setup
    streams: tuple[Stream, ...] = ()


def method_names(service_names: Sequence[str]) -> set[str]:
    """Every RPC of the given services, from the generated descriptors."""
    pool = descriptor_pool.Default()
    return {
        f"/{name}/{method.name}"
        for name in service_names
        for method in pool.FindServiceByName(name).methods
    }


def check_access_rules(info: ServiceInfo, access: Mapping[str, Permission]) -> None:
    """Refuse to start if an RPC has no declared permission (or a rule names no RPC)."""
    declared, served = set(access), method_names(info.grpc_services)
    if declared != served:
        missing, unknown = sorted(served - declared), sorted(declared - served)
        raise ConfigError(
            f"access rules do not match the RPCs: missing {missing}, unknown {unknown}"
        )


def grpc_jwks(auth_address: str) -> JwksFetcher:
    async def fetch() -> Mapping[str, Any]:
        async with grpc.aio.insecure_channel(auth_address) as channel:
            response = await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(
                auth_pb2.GetJwksRequest(), timeout=3
            )
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    return fetch


class ServiceApp:
    """A running service: its gRPC server, health monitor and background tasks."""

    def __init__(self, definition: ServiceDefinition, config: KernelConfig) -> None:
        self.definition = definition
        self.config = config
        info = definition.info
        self.kernel = Kernel(
            info=info,
            config=config,
            database=Database(config.database_url, schema=info.name),
            messaging=Messaging(config.nats_url, f"energymesh-{info.name}", definition.streams),
        )
        self.health = health.aio.HealthServicer()
        self.monitor = HealthMonitor(
            self.health,
            info.grpc_services,
            self.kernel.database,
            self.kernel.messaging,
            config.health_check_interval_seconds,
        )
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._registration: Registration | None = None

    async def start(self) -> int:
        registration = await self.definition.setup(self.kernel)
        self._registration = registration
        check_access_rules(self.definition.info, registration.access)
        verifier = TokenVerifier(
            KeySet(registration.jwks or grpc_jwks(self.config.auth_address)),
            issuer=self.config.jwt_issuer,
            audience=self.config.jwt_audience,
        )
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            interceptors=[
                KernelInterceptor(registration.access, verifier, registration.caller_check)
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                *registration.server_options,
            ],
        )
        for add_servicer in registration.servicers:
            add_servicer(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*self.definition.info.grpc_services, "grpc.health.v1.Health", reflection.SERVICE_NAME),
            server,
        )
        self.port = server.add_insecure_port(self.config.listen_address)
        await server.start()
        self.server = server
        # What is loaded by now (modules, descriptors, SQLAlchemy metadata, pools) lives as long
        # as the process: frozen, the cyclic collector stops traversing it at every full
        # collection, which under load (a thousand streams) costs a tenth of the CPU.
        gc.freeze()
        self._spawn(self.kernel.messaging.run())
        self._spawn(self.monitor.run())
        for task in registration.background:
            self._spawn(task())
        log.info("serving", extra={"address": self.config.listen_address, "port": self.port})
        return self.port

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        task.add_done_callback(_log_task_failure)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Stop answering health checks as SERVING, drain in-flight RPCs, then close pools."""
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._registration is not None:
            for hook in self._registration.on_stop:
                await hook()
        await self.kernel.messaging.close()
        await self.kernel.database.dispose()
        log.info("stopped")


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


async def serve(definition: ServiceDefinition, config: KernelConfig) -> None:
    app = ServiceApp(definition, config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await app.start()
    await stopping.wait()
    log.info("shutting down: draining in-flight calls")
    await app.stop()


def main(definition: ServiceDefinition, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{definition.info.name}")
    parser.add_argument("command", choices=["serve", "migrate"], nargs="?", default="serve")
    args = parser.parse_args(argv)
    try:
        config = definition.load_config()
    except ConfigError as error:
        print(f"{definition.info.name}: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(definition.info.name, config.log_level)
    if args.command == "migrate":
        migrations.upgrade(definition.info.name, config.database_url)
        log.info("migrations applied")
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(definition, config))
