"""Telemetry ingest benchmark (`make bench`): prints figures, asserts nothing.

In one run, on one freshly started mesh (embedded PostgreSQL, NATS, every service, Envoy):

1. raw COPY of N readings into a table identical to telemetry.readings (the limit), the best
   of three runs, each after the mesh has gone quiet (as every measured phase is);
2. end-to-end: M meters, each streaming its readings in batches of 1,000 through the Python
   client (services.telemetry.client) straight to the service, then again through Envoy;
   the first load replayed (same batch ids) to measure the dedupe cost;
3. one reading per message on StreamReadings, against a bare gRPC server that discards them.

    python -m benchmarks.ingest [--meters 1000] [--readings 1000] [--scale 1] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import psycopg

from energymesh.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from services.launcher.mesh import Mesh, MeshConfig
from services.telemetry.client import ReadingStream
from services.telemetry.ingest import COPY_HEADER, COPY_TRAILER, PG_EPOCH_MS, READING_ROW

INTERVAL_MS = 60_000
CHANNELS = 4
PASSWORD = "correct horse battery staple"


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def setup_fleet(gateway: str, meters: int) -> tuple[list[str], str]:
    async with httpx.AsyncClient(base_url=gateway, timeout=120) as http:
        registered = await http.post(
            "/v1/auth:register",
            json={
                "email": f"bench-{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "displayName": "Bench",
                "organizationName": "Bench",
            },
        )
        headers = {"Authorization": f"Bearer {registered.json()['accessToken']}"}
        site = await http.post(
            "/v1/sites", headers=headers, json={"name": "Bench", "timeZone": "UTC"}
        )
        site_id = site.json()["siteId"]
        meter_ids: list[str] = []
        for start in range(0, meters, 5000):
            rows = "".join(
                f"BENCH-{uuid.uuid4().hex[:12]},electricity,kWh,cumulative\n"
                for _ in range(min(5000, meters - start))
            )
            imported = await http.post(
                f"/v1/meters:import?siteId={site_id}",
                headers={**headers, "Content-Type": "text/csv"},
                content="serial_number,commodity,unit,register_type\n" + rows,
            )
            meter_ids += [row["meterId"] for row in imported.json()["results"]]
        key = await http.post("/v1/ingest-keys", headers=headers, json={"displayName": "bench"})
        return meter_ids, key.json()["key"]


async def wait_quiet(database_url: str, limit_seconds: float = 60.0) -> None:
    """Waits until no other client of the database has been running a query for a second
    (the mesh's outbox relays, consumers and last-seen updates settle after a load), so that
    the next measurement is not depressed by leftover work of the previous one."""
    deadline = time.monotonic() + limit_seconds
    quiet_since: float | None = None
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        while time.monotonic() < deadline:
            cursor = await pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            row = await cursor.fetchone()
            now = time.monotonic()
            if row and int(row[0]) == 0:
                quiet_since = quiet_since or now
                if now - quiet_since >= 1.0:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.05)


async def raw_copy(database_url: str, readings: int, start_ms: int, runs: int = 3) -> float:
    """COPY straight into an identical partitioned table; readings/s, the best of `runs`
    (each into an empty table, after the mesh has gone quiet)."""
    meters = max(1, readings // 1000)
    rows = np.zeros(readings, dtype=READING_ROW)
    rows["fields"], rows["meter_len"], rows["time_len"], rows["value_len"] = 3, 16, 8, 8
    ids = np.frombuffer(b"".join(uuid.uuid4().bytes for _ in range(meters)), dtype="V16")
    per_meter = readings // meters
    rows["meter"] = np.repeat(ids, per_meter)[:readings]
    times = start_ms + np.tile(np.arange(per_meter, dtype=np.int64), meters) * INTERVAL_MS
    rows["time"] = (times[:readings] - PG_EPOCH_MS) * 1000
    rows["value"] = np.arange(readings, dtype=np.float64)
    data = COPY_HEADER + rows.tobytes() + COPY_TRAILER
    best = 0.0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        await pg.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        await pg.execute("CREATE SCHEMA bench")
        await pg.execute(
            "CREATE TABLE bench.readings (LIKE telemetry.readings INCLUDING ALL) "
            "PARTITION BY RANGE (time)"
        )
        cursor = await pg.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid), c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'telemetry.readings'::regclass"
        )
        for bound, name in await cursor.fetchall():
            await pg.execute(f"CREATE TABLE bench.{name} PARTITION OF bench.readings {bound}")
        for _ in range(runs):
            await pg.execute("TRUNCATE bench.readings")
            await pg.execute("CHECKPOINT")
            await wait_quiet(database_url)
            started = time.perf_counter()
            async with (
                pg.transaction(),
                pg.cursor().copy(
                    "COPY bench.readings (meter_id, time, value) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                for offset in range(0, len(data), 1 << 20):
                    await copy.write(data[offset : offset + (1 << 20)])
            best = max(best, readings / (time.perf_counter() - started))
        await pg.execute("DROP SCHEMA bench CASCADE")
    return best


class Profiler:
    """With --profile DIR: py-spy samples the ingest process during each measured phase
    (DIR/<phase>.txt, collapsed stacks)."""

    def __init__(self, directory: str | None, pid: int) -> None:
        self.directory = Path(directory) if directory else None
        self.pid = pid

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(self.pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(self.directory / f"{name}.txt"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            await spy.wait()


async def end_to_end(
    target: str,
    key: str,
    meter_ids: list[str],
    readings: int,
    start_ms: int,
    run: str,
) -> tuple[float, int]:
    """Every meter streams its readings (batches of 1,000) through the client, concurrently;
    returns (readings/s, readings the server accepted)."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]

    async def meter(index: int, meter_id: str) -> int:
        client = ReadingStream(channels[index % CHANNELS], key, max_unacked_batches=4)
        for offset in range(0, readings, 1000):
            count = min(1000, readings - offset)
            times = [start_ms + (offset + i) * INTERVAL_MS for i in range(count)]
            await client.send(
                meter_id, times, [float(i) for i in range(count)], batch_id=f"{run}-{offset}"
            )
        await client.close()
        return client.accepted

    try:
        started = time.perf_counter()
        accepted = await asyncio.gather(*(meter(i, m) for i, m in enumerate(meter_ids)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return len(meter_ids) * readings / elapsed, sum(accepted)


async def single_readings(
    target: str, metadata: tuple[tuple[str, str], ...], meter_id: str, count: int, start_ms: int
) -> float:
    """One StreamReadings call, one reading per message; messages/s."""

    async def messages() -> AsyncIterator[telemetry_pb2.ReadingBatch]:
        for i in range(count):
            yield telemetry_pb2.ReadingBatch(
                meter_id=meter_id, time_unix_ms=[start_ms + i * INTERVAL_MS], values=[float(i)]
            )

    async with grpc.aio.insecure_channel(target) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        started = time.perf_counter()
        await stub.StreamReadings(messages(), metadata=metadata)
        return count / (time.perf_counter() - started)


async def stored_count(database_url: str, meter_ids: list[str]) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as pg:
        cursor = await pg.execute(
            "SELECT count(*) FROM telemetry.readings WHERE meter_id = ANY(%s::uuid[])",
            (meter_ids,),
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def line(name: str, rate: float, note: str = "") -> None:
    print(f"| {name:<58} | {rate:>12,.0f} | {note:<34} |")


async def bench(args: argparse.Namespace) -> None:
    meters, readings = args.meters, args.readings * args.scale
    total = meters * readings
    data_dir = Path(tempfile.mkdtemp(prefix="energymesh-bench-"))
    mesh = Mesh(MeshConfig.for_tests(data_dir, log_level="WARNING"))
    print(f"starting the mesh in {data_dir} ...", flush=True)
    mesh.start()
    bare_port = free_port()
    bare = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, "-m", "benchmarks.bare_server", str(bare_port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        meter_ids, key = await setup_fleet(mesh.gateway_url, meters)
        single_meter_ids, _ = await setup_fleet(mesh.gateway_url, 1)
        del single_meter_ids
        direct = mesh.service_address("telemetry")
        gateway = mesh.gateway_url.removeprefix("http://")
        day = 86_400_000
        span = readings * INTERVAL_MS
        first_start = int(time.time() * 1000) // day * day - 2 * span - day
        print(f"{meters} meters x {readings} readings = {total:,} per run\n", flush=True)

        # Warm-up (partitions, connections, caches), not measured.
        await end_to_end(direct, key, meter_ids[:10], 1000, first_start - 400 * day, "warm")
        copy_rate = await raw_copy(mesh.database_url, total, first_start)
        profiler = Profiler(args.profile, mesh.process("telemetry").pid)
        phase_rss = {"warm-up": peak_rss(profiler.pid)}
        database_url = mesh.database_url

        async def load(name: str, target: str, start: int, run: str) -> tuple[float, int]:
            await wait_quiet(database_url)
            async with profiler.phase(name):
                result = await end_to_end(target, key, meter_ids, readings, start, run)
            phase_rss[name] = peak_rss(profiler.pid)
            return result

        e2e_rate, accepted = await load("first", direct, first_start, "a")
        after_first = await stored_count(database_url, meter_ids)
        replay_rate, _ = await load("replay", direct, first_start, "a")
        after_replay = await stored_count(database_url, meter_ids)
        fresh_ids_rate, _ = await load("fresh_ids", direct, first_start, "b")
        after_fresh_ids = await stored_count(database_url, meter_ids)
        envoy_rate, _ = await load("envoy", gateway, first_start + span, "c")
        metadata = (("authorization", f"Bearer {key}"),)
        singles = 20_000 * args.scale
        await wait_quiet(database_url)
        bare_rate = await single_readings(
            f"127.0.0.1:{bare_port}", metadata, meter_ids[0], singles, first_start
        )
        await wait_quiet(database_url)
        async with profiler.phase("singles"):
            single_rate = await single_readings(
                direct, metadata, meter_ids[0], singles, first_start - 200 * day
            )
        rss = peak_rss(mesh.process("telemetry").pid)
    finally:
        bare.terminate()
        bare.wait()
        mesh.stop()

    print(f"| {'measure':<58} | {'readings/s':>12} | {'vs baseline / target':<34} |")
    print(f"|{'-' * 60}|{'-' * 14}|{'-' * 36}|")
    line("(1) raw COPY into an identical table (the limit)", copy_rate, "1.00x")
    line(
        f"(2) end-to-end, {meters} streams, client -> service",
        e2e_rate,
        f"{e2e_rate / copy_rate:.2f}x of (1)  (target >= 0.7x)",
    )
    line(
        f"(2) end-to-end, {meters} streams, client -> Envoy -> service",
        envoy_rate,
        f"{envoy_rate / copy_rate:.2f}x of (1)  (target >= 0.6x)",
    )
    line(
        "(2) replay of (2), same batch ids (dedupe by batch id)",
        replay_rate,
        f"{replay_rate / e2e_rate:.2f}x of first write (target >= 2x)",
    )
    line(
        "(2) replay of (2), new batch ids (dedupe by (meter, time))",
        fresh_ids_rate,
        f"{fresh_ids_rate / e2e_rate:.2f}x of first write",
    )
    line("(3) bare gRPC stream, 1 reading per message, discarded", bare_rate, "1.00x")
    line(
        "(3) StreamReadings, 1 reading per message, stored",
        single_rate,
        f"{single_rate / bare_rate:.2f}x of bare (target >= 0.5x)",
    )
    print()
    print(f"stored after the first write: {after_first:,} (accepted {accepted:,} of {total:,})")
    print(
        f"stored after the replays:     {after_replay:,} / {after_fresh_ids:,} "
        f"(nothing new: {after_first == after_replay == after_fresh_ids})"
    )
    print(
        f"ingest process peak RSS: {rss / 2**20:.0f} MiB with {meters} concurrent streams "
        "(target < 300 MiB)"
    )
    print(
        "ingest peak RSS after each phase: "
        + ", ".join(f"{name} {value / 2**20:.0f} MiB" for name, value in phase_rss.items())
    )
    print(f"cores: {os.cpu_count()}; client, service, PostgreSQL and Envoy share them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=1000, help="per meter and run")
    parser.add_argument("--scale", type=int, default=1, help="multiplies readings per meter")
    parser.add_argument(
        "--profile", metavar="DIR", help="sample the ingest process with py-spy per phase"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
