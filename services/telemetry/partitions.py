"""Monthly partitions of telemetry.readings: created ahead of time by a background task, and on
demand (before the transaction that needs them) when a backfill reaches a month that has none.

Partition names are readings_pYYYY_MM, bounds [first of the month, first of the next) in UTC.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy import text

from services.kernel.database import Database

log = logging.getLogger(__name__)

# Serialises partition creation across replicas (CREATE … PARTITION OF takes a strong lock on
# the parent, and two creators of the same month would collide).
LOCK_KEY = 0x7E1E_0001


def month_start(year: int, month: int) -> date:
    return date(year, month, 1)


def next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"readings_p{month.year:04d}_{month.month:02d}"


class Partitions:
    def __init__(self, database: Database, ahead_months: int) -> None:
        self._database = database
        self._ahead = ahead_months
        self._known: set[date] = set()
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with self._database.sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'telemetry.readings'::regclass"
                )
            )
            for (name,) in rows:
                try:
                    year, month = str(name).removeprefix("readings_p").split("_")
                    self._known.add(month_start(int(year), int(month)))
                except ValueError:
                    continue

    async def ensure_for(self, times_ms: npt.NDArray[np.int64] | npt.NDArray[np.float64]) -> None:
        """Makes sure every month holding one of these times (ms since the epoch) has its
        partition."""
        if not len(times_ms):
            return
        bounds = np.array([times_ms.min(), times_ms.max()]).astype("datetime64[ms]")
        first, last = bounds.astype("datetime64[M]").astype(str).tolist()
        if first == last and month_start(int(first[:4]), int(first[5:7])) in self._known:
            return  # the usual case: a load within one month that has its partition
        months = np.unique(times_ms.astype("datetime64[ms]").astype("datetime64[M]"))
        wanted = {
            month_start(int(str(m)[:4]), int(str(m)[5:7])) for m in months.astype(str).tolist()
        }
        missing = wanted - self._known
        if missing:
            await self.create(sorted(missing))

    async def create(self, months: list[date]) -> None:
        async with self._lock:
            months = [month for month in months if month not in self._known]
            if not months:
                return
            async with self._database.transaction() as session:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
                for month in months:
                    name = partition_name(month)
                    await session.execute(
                        text(
                            f"CREATE TABLE IF NOT EXISTS telemetry.{name} "
                            "PARTITION OF telemetry.readings "
                            f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') "
                            f"TO ('{next_month(month).isoformat()} 00:00+00')"
                        )
                    )
            self._known.update(months)
            log.info("created readings partitions", extra={"months": [str(m) for m in months]})

    async def run(self, interval_seconds: float = 3600.0) -> None:
        """Keeps the current month and the next `ahead_months` partitioned."""
        while True:
            try:
                if not self._known:
                    await self.load()
                today = datetime.now(UTC).date()
                month = month_start(today.year, today.month)
                months = [month]
                for _ in range(self._ahead):
                    month = next_month(month)
                    months.append(month)
                await self.create(months)
            except Exception as exc:
                log.warning("could not create partitions ahead (%s); will retry", exc)
                await asyncio.sleep(5)
                continue
            await asyncio.sleep(interval_seconds)
