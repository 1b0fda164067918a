"""The connectivity monitor is woken by telemetry.readings.committed only when the event brings
the next offline deadline forward: readings of meters that are already ONLINE, the common case,
start no scan of the meters. The database is replaced by fakes of the repository queries."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.devices import repository
from services.devices.domain import DevicesDomain
from services.devices.events import ReadingsCommitted
from services.devices.models import Meter

ORGANIZATION = str(uuid.uuid4())


class FakeDatabase:
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[object]:
        yield object()

    @contextlib.asynccontextmanager
    async def sessions(self) -> AsyncIterator[object]:
        yield object()


class FakeOutbox:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.wakes = 0

    async def add(self, session: object, subject: str, event: object) -> None:
        self.events.append(subject)

    def wake(self) -> None:
        self.wakes += 1


def meter(interval_seconds: int, last_seen: datetime | None, announced: str) -> Meter:
    return Meter(
        id=str(uuid.uuid4()),
        organization_id=ORGANIZATION,
        site_id=str(uuid.uuid4()),
        serial_number="SN-1",
        name="",
        state="active",
        expected_interval_seconds=interval_seconds,
        last_seen_time=last_seen,
        announced_connectivity=announced,
    )


class World:
    """Meters by id, and how many scans (passes) the monitor made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.meters: dict[str, Meter] = {}
        self.scans = 0
        self._scan = asyncio.Event()

        async def record_seen(
            session: Any, organization_id: str, meter_id: str, seen: datetime
        ) -> Meter | None:
            found = self.meters.get(meter_id)
            if found is not None and (found.last_seen_time is None or found.last_seen_time < seen):
                found.last_seen_time = seen
            return found

        async def connectivity_changes(session: Any, now: datetime, limit: int) -> list[Meter]:
            self.scans += 1
            self._scan.set()
            return []

        async def next_offline_time(session: Any) -> datetime | None:
            deadlines = [
                m.last_seen_time + timedelta(seconds=2 * m.expected_interval_seconds)
                for m in self.meters.values()
                if m.announced_connectivity == "online" and m.last_seen_time is not None
            ]
            return min(deadlines, default=None)

        monkeypatch.setattr(repository, "record_seen", record_seen)
        monkeypatch.setattr(repository, "connectivity_changes", connectivity_changes)
        monkeypatch.setattr(repository, "next_offline_time", next_offline_time)

    def add(self, found: Meter) -> Meter:
        self.meters[found.id] = found
        return found

    async def scanned(self, times: int) -> None:
        async with asyncio.timeout(2):
            while self.scans < times:
                self._scan.clear()
                await self._scan.wait()


async def test_readings_of_online_meters_do_not_wake_the_monitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(monkeypatch)
    now = datetime.now(UTC)
    online = world.add(meter(900, now - timedelta(seconds=10), "online"))
    outbox = FakeOutbox()
    domain = DevicesDomain(FakeDatabase(), outbox)  # type: ignore[arg-type]
    monitor = asyncio.create_task(domain.run_connectivity_monitor(max_sleep_seconds=60))
    try:
        await world.scanned(1)
        for second in range(100):
            seen = now - timedelta(seconds=9) + timedelta(milliseconds=second)
            await domain.record_readings(ReadingsCommitted(ORGANIZATION, online.id, seen))
        await asyncio.sleep(0.05)
        assert world.scans == 1
        assert (outbox.events, outbox.wakes) == ([], 0)

        # A meter coming online goes offline (in 2 s) before the monitor's next pass (in a
        # minute, its longest sleep): the monitor is woken to recompute.
        fast = world.add(meter(1, None, "offline"))
        await domain.record_readings(ReadingsCommitted(ORGANIZATION, fast.id, now))
        await world.scanned(2)
        assert outbox.events == ["devices.meter.connectivity_changed"]
        # Its readings do not wake the monitor either, now that it is ONLINE.
        await domain.record_readings(
            ReadingsCommitted(ORGANIZATION, fast.id, now + timedelta(milliseconds=1))
        )
        await asyncio.sleep(0.05)
        assert world.scans == 2
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor


async def test_a_meter_coming_online_after_the_next_pass_does_not_wake_the_monitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(monkeypatch)
    now = datetime.now(UTC)
    world.add(meter(1, now, "online"))  # due in 2 s: the monitor's next pass
    slow = world.add(meter(900, None, "offline"))
    domain = DevicesDomain(FakeDatabase(), FakeOutbox())  # type: ignore[arg-type]
    monitor = asyncio.create_task(domain.run_connectivity_monitor(max_sleep_seconds=60))
    try:
        await world.scanned(1)
        await domain.record_readings(ReadingsCommitted(ORGANIZATION, slow.id, now))
        assert slow.announced_connectivity == "online"
        await asyncio.sleep(0.05)
        assert world.scans == 1
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
