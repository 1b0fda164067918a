"""grpc.health.v1 that tells the truth: NOT_SERVING while the database or NATS is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from services.kernel.database import Database
from services.kernel.messaging import Messaging

log = logging.getLogger(__name__)

# Always SERVING while the process runs: for liveness probes, which must not restart a pod
# because its database is down (readiness uses the service names instead).
LIVENESS = "liveness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
        database: Database,
        messaging: Messaging,
        interval_seconds: float,
    ) -> None:
        self.servicer = servicer
        # "" is the whole server, as grpc.health.v1 defines it.
        self._names = ("", *service_names)
        self._database = database
        self._messaging = messaging
        self._interval = interval_seconds
        self._serving: bool | None = None

    async def check_once(self) -> bool:
        database_ok = await self._database.ping()
        nats_ok = self._messaging.connected
        serving = database_ok and nats_ok
        if serving != self._serving:
            self._serving = serving
            status = SERVING if serving else NOT_SERVING
            for name in self._names:
                await self.servicer.set(name, status)
            log.log(
                logging.INFO if serving else logging.WARNING,
                "health is %s",
                "SERVING" if serving else "NOT_SERVING",
                extra={"database": database_ok, "nats": nats_ok},
            )
        return serving

    async def run(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        for name in self._names:
            await self.servicer.set(name, NOT_SERVING)
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)
