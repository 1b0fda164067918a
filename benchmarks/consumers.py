"""The durable consumers of telemetry's events (analytics' rollups, devices' last_seen, and
whatever subscribes later): pausing them while ingest is measured, and measuring how fast they
work through the events it produced.

Every committed group emits one telemetry.readings.committed per meter, and those consumers
react by reading the readings back (analytics recomputes the affected days' rollups), which
costs more CPU per reading than storing it. On a shared 2-core machine they would otherwise
run during the next phases too, long after the load that caused them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from services.telemetry.events import TELEMETRY_STREAM


class ReadingConsumers:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    async def __aenter__(self) -> Self:
        self._client = await nats.connect(self.nats_url)
        self._js = self._client.jetstream()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "use ReadingConsumers as an async context manager"
        return self._js

    async def names(self) -> list[str]:
        infos = await self.js.consumers_info(TELEMETRY_STREAM.name)
        return sorted(info.name for info in infos if info.config.durable_name)

    async def backlog(self) -> dict[str, int]:
        """Per durable consumer: events not yet delivered plus delivered and not yet acked."""
        infos = await self.js.consumers_info(TELEMETRY_STREAM.name)
        return {
            info.name: (info.num_pending or 0) + (info.num_ack_pending or 0)
            for info in infos
            if info.config.durable_name
        }

    async def pause(self, names: list[str] | None = None, seconds: float = 600) -> None:
        """Pauses the named durable consumers of the stream, or all (at most `seconds`, in case
        the benchmark dies before resuming them)."""
        until = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name in names or await self.names():
            await self.js.pause_consumer(TELEMETRY_STREAM.name, name, until)

    async def resume(self, names: list[str] | None = None) -> None:
        for name in names or await self.names():
            await self.js.resume_consumer(TELEMETRY_STREAM.name, name)

    async def published(self) -> int:
        """Events the stream holds (its last sequence number)."""
        info = await self.js.stream_info(TELEMETRY_STREAM.name)
        return int(info.state.last_seq)

    async def drain(self, seconds: float) -> dict[str, tuple[int, float]]:
        """Lets the consumers work for `seconds`; per consumer, the events it acknowledged and
        the seconds it worked (less than `seconds` when it caught up earlier)."""
        before = await self.backlog()
        started = time.perf_counter()
        caught_up: dict[str, float] = {}
        after = before
        while time.perf_counter() - started < seconds:
            await asyncio.sleep(0.1)
            after = await self.backlog()
            for name, pending in after.items():
                if pending == 0:
                    caught_up.setdefault(name, time.perf_counter() - started)
        return {
            name: (before[name] - after.get(name, 0), caught_up.get(name, seconds))
            for name in before
        }
