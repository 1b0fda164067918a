"""Analytics benchmark (`make bench`, after the ingest one): prints figures, asserts nothing.

On one freshly started mesh (embedded PostgreSQL, NATS, every service, Envoy): `--meters`
meters x `--days` days of 15-minute readings COPYed straight into telemetry.readings, their
rollups built through the consumer's own code (RollupMaintainer.recompute, a local month of a
batch of meters per transaction), then p50/p99 of four queries over gRPC against the
analytics service, and of the same answers computed from the raw readings in SQL (with how
closely the two agree). How fast the rollup consumer keeps up with ingest is measured by the
ingest benchmark (its consumers line), on the events of its own load.

    python -m benchmarks.analytics [--scale 0.1] [--days 365] [--sites 10]
    Full scale (1,000 meters, 35M readings): --scale 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import httpx
import numpy as np
import psycopg
from google.protobuf import timestamp_pb2

from energymesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.analytics.maintenance import RollupMaintainer
from services.analytics.models import OUTBOX
from services.analytics.recompute import Change
from services.analytics.rollups import Granularity, bucket_spans, local_midnight_ms
from services.kernel import pgcopy
from services.kernel.database import Database
from services.kernel.messaging import Messaging
from services.kernel.outbox import Outbox
from services.launcher.mesh import Mesh, MeshConfig
from services.telemetry.partitions import Partitions

ZONE_NAME = "Europe/Berlin"
ZONE = ZoneInfo(ZONE_NAME)
PASSWORD = "correct horse battery staple"
QUARTER_MS = 900_000
# The simulator's daily profile (services/telemetry/simulate.py): night, morning, day,
# evening, late.
PROFILE = np.array([0.5] * 6 + [1.2] * 3 + [0.8] * 8 + [1.5] * 5 + [0.7] * 2)
READING = pgcopy.row_dtype(
    [("meter_id", pgcopy.UUID), ("time", pgcopy.TIMESTAMPTZ), ("value", pgcopy.FLOAT8)]
)
BUILD_BATCH_METERS = 100


@dataclass
class Fleet:
    email: str
    token: str
    site_ids: list[str]
    meter_ids: list[str]
    meters_by_site: dict[str, list[str]]


async def setup_fleet(gateway: str, sites: int, meters: int) -> Fleet:
    """An organization with `sites` sites in Europe/Berlin and `meters` cumulative
    electricity meters spread over them (CSV import)."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=gateway, timeout=300) as http:
        registered = await http.post(
            "/v1/auth:register",
            json={
                "email": email,
                "password": PASSWORD,
                "displayName": "Bench",
                "organizationName": "Bench",
            },
        )
        token = registered.json()["accessToken"]
        headers = {"Authorization": f"Bearer {token}"}
        fleet = Fleet(email, token, [], [], {})
        for index in range(sites):
            site = await http.post(
                "/v1/sites", headers=headers, json={"name": f"Site {index}", "timeZone": ZONE_NAME}
            )
            site_id = site.json()["siteId"]
            count = meters // sites + (1 if index < meters % sites else 0)
            rows = "".join(
                f"BENCH-{uuid.uuid4().hex[:12]},electricity,kWh,cumulative\n" for _ in range(count)
            )
            imported = await http.post(
                f"/v1/meters:import?siteId={site_id}",
                headers={**headers, "Content-Type": "text/csv"},
                content="serial_number,commodity,unit,register_type\n" + rows,
            )
            ids = [row["meterId"] for row in imported.json()["results"]]
            fleet.site_ids.append(site_id)
            fleet.meters_by_site[site_id] = ids
            fleet.meter_ids += ids
        return fleet


async def log_in(gateway: str, email: str) -> str:
    """A fresh access token (a full-scale build outlasts the first one)."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        answer = await http.post("/v1/auth:login", json={"email": email, "password": PASSWORD})
    return str(answer.raise_for_status().json()["accessToken"])


async def wait_for(check: Callable[[], Awaitable[bool]], limit_seconds: float = 600) -> None:
    deadline = time.monotonic() + limit_seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the mesh did not get there in time")
        await asyncio.sleep(0.2)


async def analytics_knows(database_url: str, meter_ids: list[str]) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as pg:
        cursor = await pg.execute(
            "SELECT count(*) FROM analytics.meters WHERE id = ANY(%s::uuid[])", (meter_ids,)
        )
        row = await cursor.fetchone()
    return row is not None and int(row[0]) == len(meter_ids)


# --- queries at scale -------------------------------------------------------------------------


def local_offsets(times_ms: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The zone's UTC offset (ms) at each instant."""
    offsets = []
    for t in times_ms.tolist():
        offset = ZONE.utcoffset(datetime.fromtimestamp(t / 1000, UTC))
        offsets.append(0 if offset is None else offset // timedelta(milliseconds=1))
    return np.array(offsets, dtype=np.int64)


def meter_readings(meter_id: str, start_ms: int, days: int, seed: int) -> np.ndarray[Any, Any]:
    """A year of 15-minute cumulative readings of an office-like meter: the daily profile,
    lower at weekends, noise."""
    rng = np.random.default_rng(seed)
    count = days * 96 + 1
    times = start_ms + np.arange(count, dtype=np.int64) * QUARTER_MS
    local = times + local_offsets(times[::96]).repeat(96)[:count]
    hour = (local // 3_600_000) % 24
    weekday = ((local // 86_400_000) + 3) % 7  # 1970-01-01 was a Thursday
    level = rng.uniform(2.0, 20.0) * PROFILE[hour] * np.where(weekday >= 5, 0.6, 1.0)
    increments = level * 0.25 * rng.lognormal(0.0, 0.1, count)
    rows = pgcopy.new_rows(READING, count)
    rows["meter_id"] = np.frombuffer(uuid.UUID(meter_id).bytes, dtype="V16")[0]
    rows["time"] = pgcopy.to_timestamptz(times)
    rows["value"] = 1000.0 + np.cumsum(increments)
    return rows


async def load_readings(database_url: str, meter_ids: list[str], start_ms: int, days: int) -> float:
    """COPYs every meter's readings straight into telemetry.readings; returns seconds."""
    database = Database(database_url, schema="telemetry")
    await Partitions(database, 0).ensure_for(
        np.arange(start_ms, start_ms + days * 86_400_000, 20 * 86_400_000, dtype=np.int64)
    )
    await database.dispose()
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(database_url) as pg:
        for index, meter_id in enumerate(meter_ids):
            rows = meter_readings(meter_id, start_ms, days, index)
            async with (
                pg.cursor() as cursor,
                cursor.copy(
                    "COPY telemetry.readings (meter_id, time, value) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                await pgcopy.write(copy, rows)
            if index % 50 == 49:
                await pg.commit()
        await pg.commit()
        await pg.execute("ANALYZE telemetry.readings")
        await pg.commit()
    return time.perf_counter() - started


async def build_rollups(
    database_url: str, nats_url: str, meter_ids: list[str], start_ms: int, end_ms: int
) -> float:
    """Builds the rollups through the consumer's code, a local month of a batch of meters per
    transaction; returns seconds."""
    database = Database(database_url, schema="analytics")
    outbox = Outbox(database, OUTBOX, Messaging(nats_url, "bench"))
    maintainer = RollupMaintainer(database, outbox)
    months = bucket_spans(start_ms, end_ms, Granularity.MONTH, ZONE)
    started = time.perf_counter()
    for month_start, month_end in months:
        first, last = max(month_start, start_ms), min(month_end, end_ms) - 1
        for offset in range(0, len(meter_ids), BUILD_BATCH_METERS):
            batch = meter_ids[offset : offset + BUILD_BATCH_METERS]
            await maintainer.recompute([Change(meter_id, first, last) for meter_id in batch])
    seconds = time.perf_counter() - started
    await database.dispose()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        await pg.execute("VACUUM ANALYZE analytics.rollups")
        await pg.execute("VACUUM ANALYZE analytics.site_rollups")
    return seconds


def stamp(ms: int) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromMilliseconds(ms)
    return result


RAW_SERIES = """
    SELECT date_bin(%(step)s, time - interval '1 millisecond', %(origin)s) AS bucket, sum(delta)
    FROM (
        SELECT time, value - lag(value) OVER (PARTITION BY meter_id ORDER BY time) AS delta
        FROM telemetry.readings
        WHERE meter_id = ANY(%(meters)s::uuid[]) AND time >= %(lo)s AND time <= %(hi)s
    ) AS d
    WHERE delta IS NOT NULL AND time > %(lo)s
    GROUP BY 1 ORDER BY 1
"""
RAW_DAYS = """
    SELECT date_trunc('day', (time - interval '1 millisecond') AT TIME ZONE %(zone)s), sum(delta)
    FROM (
        SELECT time, value - lag(value) OVER (PARTITION BY meter_id ORDER BY time) AS delta
        FROM telemetry.readings
        WHERE meter_id = ANY(%(meters)s::uuid[]) AND time >= %(lo)s AND time <= %(hi)s
    ) AS d
    WHERE delta IS NOT NULL AND time > %(lo)s
    GROUP BY 1 ORDER BY 1
"""
RAW_SUMMARY = """
    WITH quarters AS (
        SELECT date_bin('15 minutes', time - interval '1 millisecond',
                        %(lo)s) AS quarter, sum(delta) AS amount
        FROM (
            SELECT time, value - lag(value) OVER (PARTITION BY meter_id ORDER BY time) AS delta
            FROM telemetry.readings
            WHERE meter_id = ANY(%(meters)s::uuid[]) AND time >= %(previous)s
              AND time <= %(hi)s
        ) AS d
        WHERE delta IS NOT NULL AND time > %(previous)s
        GROUP BY 1
    ), hours AS (
        SELECT date_trunc('hour', quarter) AS hour, sum(amount) AS amount FROM quarters
        WHERE quarter >= %(lo)s GROUP BY 1
    )
    SELECT
        (SELECT sum(amount) FROM quarters WHERE quarter >= %(lo)s),
        (SELECT max(amount) * 4 FROM quarters WHERE quarter >= %(lo)s),
        (SELECT percentile_cont(0.05) WITHIN GROUP (ORDER BY amount) FROM hours),
        (SELECT sum(amount) FROM quarters WHERE quarter < %(lo)s)
"""


@dataclass
class Measured:
    name: str
    rollup_ms: list[float]
    raw_ms: list[float]
    difference: float


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> tuple[list[float], Any]:
    result: Any = None
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, result


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


async def measure_queries(
    mesh: Mesh, fleet: Fleet, start_ms: int, end_ms: int, repeat: int, raw_repeat: int
) -> list[Measured]:
    channel = grpc.aio.insecure_channel(mesh.service_address("analytics"))
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    metadata = (("authorization", f"Bearer {fleet.token}"),)
    site = fleet.site_ids[0]
    site_meters = fleet.meters_by_site[site]
    meter = fleet.meter_ids[0]
    last_day = datetime.fromtimestamp(end_ms / 1000, ZONE).date()
    year_lo = local_midnight_ms(last_day - timedelta(days=364), ZONE)
    year_hi = local_midnight_ms(last_day, ZONE)
    week_lo = local_midnight_ms(last_day - timedelta(days=7), ZONE)
    month_first = date(last_day.year, last_day.month, 1) - timedelta(days=1)
    month_lo = local_midnight_ms(month_first.replace(day=1), ZONE)
    month_hi = local_midnight_ms(month_first + timedelta(days=1), ZONE)
    previous_lo = month_lo - (month_hi - month_lo)
    results: list[Measured] = []
    pg = await psycopg.AsyncConnection.connect(mesh.database_url)

    async def raw(query: str, params: dict[str, Any]) -> list[Any]:
        cursor = await pg.execute(query, params)
        return await cursor.fetchall()

    def when(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    # Org daily consumption for a year (in the sites' zone).
    org_request = analytics_pb2.GetOrganizationConsumptionRequest(
        start_time=stamp(year_lo),
        end_time=stamp(year_hi),
        granularity=analytics_pb2.GRANULARITY_DAY,
        time_zone=ZONE_NAME,
    )
    samples, answer = await timed(
        lambda: stub.GetOrganizationConsumption(org_request, metadata=metadata), repeat
    )
    raw_samples, raw_answer = await timed(
        lambda: raw(
            RAW_DAYS,
            {
                "zone": ZONE_NAME,
                "meters": fleet.meter_ids,
                "lo": when(year_lo),
                "hi": when(year_hi),
            },
        ),
        raw_repeat,
    )
    total = sum(point.value for point in answer.series[0].points)
    results.append(
        Measured(
            f"org daily for a year ({len(answer.series[0].points)} days)",
            samples,
            raw_samples,
            relative_difference(total, sum(float(row[1]) for row in raw_answer)),
        )
    )

    # Site hourly for a week.
    site_request = analytics_pb2.GetSiteConsumptionRequest(
        site_id=site,
        start_time=stamp(week_lo),
        end_time=stamp(year_hi),
        granularity=analytics_pb2.GRANULARITY_HOUR,
    )
    samples, answer = await timed(
        lambda: stub.GetSiteConsumption(site_request, metadata=metadata), repeat
    )
    raw_samples, raw_answer = await timed(
        lambda: raw(
            RAW_SERIES,
            {
                "step": timedelta(hours=1),
                "origin": when(week_lo),
                "meters": site_meters,
                "lo": when(week_lo),
                "hi": when(year_hi),
            },
        ),
        raw_repeat,
    )
    results.append(
        Measured(
            f"site hourly for a week ({len(site_meters)} meters)",
            samples,
            raw_samples,
            relative_difference(
                sum(p.value for p in answer.series[0].points), sum(float(r[1]) for r in raw_answer)
            ),
        )
    )

    # Meter 15-minute for a month.
    meter_request = analytics_pb2.GetMeterConsumptionRequest(
        meter_id=meter,
        start_time=stamp(month_lo),
        end_time=stamp(month_hi),
        granularity=analytics_pb2.GRANULARITY_QUARTER_HOUR,
    )
    samples, answer = await timed(
        lambda: stub.GetMeterConsumption(meter_request, metadata=metadata), repeat
    )
    raw_samples, raw_answer = await timed(
        lambda: raw(
            RAW_SERIES,
            {
                "step": timedelta(minutes=15),
                "origin": when(month_lo),
                "meters": [meter],
                "lo": when(month_lo),
                "hi": when(month_hi),
            },
        ),
        raw_repeat,
    )
    results.append(
        Measured(
            f"meter 15-minute for a month ({len(answer.series.points)} quarters)",
            samples,
            raw_samples,
            relative_difference(
                sum(p.value for p in answer.series.points), sum(float(r[1]) for r in raw_answer)
            ),
        )
    )

    # Site summary for a month.
    summary_request = analytics_pb2.GetSiteSummaryRequest(
        site_id=site, start_time=stamp(month_lo), end_time=stamp(month_hi)
    )
    samples, summary = await timed(
        lambda: stub.GetSiteSummary(summary_request, metadata=metadata), repeat
    )
    raw_samples, raw_answer = await timed(
        lambda: raw(
            RAW_SUMMARY,
            {
                "meters": site_meters,
                "lo": when(month_lo),
                "hi": when(month_hi),
                "previous": when(previous_lo),
            },
        ),
        raw_repeat,
    )
    figures = summary.commodities[0]
    raw_total, raw_peak, raw_baseload, raw_previous = (float(v) for v in raw_answer[0])
    results.append(
        Measured(
            "site summary for a month",
            samples,
            raw_samples,
            max(
                relative_difference(figures.total, raw_total),
                relative_difference(figures.peak_demand, raw_peak),
                relative_difference(figures.previous_total, raw_previous),
            ),
        )
    )
    del raw_baseload  # hourly buckets of local vs UTC hours differ only across DST: not compared
    await pg.close()
    await channel.close()
    return results


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def report(results: list[Measured]) -> None:
    print(
        f"| {'query':<44} | {'rollups p50':>11} | {'p99':>8} | {'raw p50':>9} | {'p99':>9} "
        f"| {'raw/rollups':>11} | {'answers differ by':>17} |"
    )
    print(f"|{'-' * 46}|{'-' * 13}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 19}|")
    for item in results:
        p50, p99 = percentile(item.rollup_ms, 50), percentile(item.rollup_ms, 99)
        raw50, raw99 = percentile(item.raw_ms, 50), percentile(item.raw_ms, 99)
        print(
            f"| {item.name:<44} | {p50:>8.1f} ms | {p99:>5.1f} ms | {raw50:>6.0f} ms "
            f"| {raw99:>6.0f} ms | {raw50 / p50:>10.0f}x | {item.difference:>17.1e} |"
        )
    print("targets: p99 < 50 ms per rollup query at full scale (1,000 meters); >= 50x raw")


async def bench(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="energymesh-bench-analytics-"))
    mesh = Mesh(MeshConfig.for_tests(data_dir, log_level="WARNING"))
    print(f"starting the mesh in {data_dir} ...", flush=True)
    mesh.start()
    try:
        fleet = await setup_fleet(mesh.gateway_url, args.sites, args.meters)
        await wait_for(lambda: analytics_knows(mesh.database_url, fleet.meter_ids))
        today = datetime.now(ZONE).date()
        start_ms = local_midnight_ms(today - timedelta(days=args.days + 1), ZONE)
        end_ms = start_ms + args.days * 86_400_000
        readings = len(fleet.meter_ids) * (args.days * 96 + 1)
        print(
            f"{args.meters} meters x {args.days} days of 15-minute readings = {readings:,} "
            f"readings, {args.sites} sites in {ZONE_NAME}",
            flush=True,
        )
        copy_seconds = await load_readings(mesh.database_url, fleet.meter_ids, start_ms, args.days)
        print(f"COPY into telemetry.readings: {readings / copy_seconds:,.0f} readings/s")
        build_seconds = await build_rollups(
            mesh.database_url, mesh.nats_url, fleet.meter_ids, start_ms, end_ms + QUARTER_MS
        )
        print(
            f"rollups built through the consumer's code: {build_seconds:.0f} s, "
            f"{readings / build_seconds:,.0f} readings/s\n",
            flush=True,
        )
        fleet.token = await log_in(mesh.gateway_url, fleet.email)
        results = await measure_queries(mesh, fleet, start_ms, end_ms, args.repeat, args.raw_repeat)
        report(results)
        print(f"cores: {os.cpu_count()}; the benchmark, PostgreSQL and the services share them")
    finally:
        mesh.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=0.1, help="share of the full 1,000 meters (1 = 35M readings)"
    )
    parser.add_argument("--meters", type=int, help="overrides --scale")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50, help="samples per rollup query")
    parser.add_argument("--raw-repeat", type=int, default=3, help="samples per raw query")
    args = parser.parse_args()
    if args.meters is None:
        args.meters = max(1, round(1000 * args.scale))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
