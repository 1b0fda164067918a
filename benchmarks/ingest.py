"""Telemetry ingest benchmark (`make bench`): prints figures, asserts nothing.

In one run, on one freshly started mesh (embedded PostgreSQL, NATS, every service, Envoy):

1. raw COPY of N readings into a table identical to telemetry.readings (the limit), the best
   of three runs, each into the emptied table, alternating with the direct runs of (2);
2. end-to-end: M meters, each streaming its readings in batches of 1,000 through the Python
   client (services.telemetry.client) on its own stream straight to the service, then again
   through Envoy, every run new data; the first run replayed with the same batch ids (dedupe
   by batch id) and once with new ones (dedupe by meter and time);
3. one reading per message on StreamReadings, alternating with a bare gRPC server that
   discards them;
4. the consumers of telemetry.readings.committed (analytics rollups, devices last_seen)
   working through the events of all that, and one more end-to-end run while they do.

Every measure but the replay with new batch ids is the best of three runs (--runs), as the
raw COPY is; every run is listed. Every phase starts once telemetry's outbox is published, a
CHECKPOINT has written the dirty buffers out and the mesh has gone idle (under a tenth of a
core; the rest of the machine is given up to 10 s to do the same, 30 s in a whole run).

Telemetry's event consumers are paused during (1)-(3): on two shared cores they would
otherwise spend the next phases on the previous one's events (analytics costs more CPU per
reading than ingest). The real deployment runs them: (4) shows what they cost and how
ingest fares beside them. Per phase, the CPU seconds of every process tree are printed, and
the machine's CPU time outside them (other work on a shared machine).

    python -m benchmarks.ingest [--meters 1000] [--readings 1000] [--scale 1] [--runs 3]
                                [--consumer-seconds 5] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psycopg

from benchmarks.consumers import ReadingConsumers
from benchmarks.cpu import CpuMeter, machine_busy_seconds
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


async def outbox_backlog(database_url: str) -> int:
    """Events telemetry has committed and not yet published."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        cursor = await pg.execute("SELECT count(*) FROM telemetry.outbox")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def wait_outbox_empty(database_url: str, limit_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + limit_seconds
    while await outbox_backlog(database_url) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


# Over a whole run, at most this long is spent waiting for other work on the machine to stop.
NEIGHBOURS_BUDGET_SECONDS = 30.0


async def wait_idle(
    cpu: CpuMeter, limit_seconds: float = 60.0, neighbours_seconds: float = 10.0
) -> None:
    """Waits until the mesh has used under a tenth of a core for a second (leftover work
    of the previous phase: consumers, outbox relays, autovacuum), and for at most
    `neighbours_seconds` until the rest of the machine has used under a quarter of a core
    (other work on a shared machine), so that the next measurement is not depressed by it."""
    started = time.monotonic()
    mesh_before, machine_before = sum(cpu.sample().values()), machine_busy_seconds()
    while time.monotonic() - started < limit_seconds:
        await asyncio.sleep(1.0)
        mesh_after, machine_after = sum(cpu.sample().values()), machine_busy_seconds()
        mesh = mesh_after - mesh_before
        outside = machine_after - machine_before - mesh
        if mesh < 0.1 and (outside < 0.25 or time.monotonic() - started > neighbours_seconds):
            return
        mesh_before, machine_before = mesh_after, machine_after


async def checkpoint(database_url: str) -> None:
    """Writes every dirty buffer out, so that no phase pays for the previous one's."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as pg:
        await pg.execute("CHECKPOINT")


class RawCopy:
    """The limit: COPY of the same number of readings straight into a table identical to
    telemetry.readings (its indexes and partitions), emptied before each run. One connection
    for all runs (its backend's CPU time is counted while it lives)."""

    def __init__(self, database_url: str, readings: int, start_ms: int) -> None:
        self.database_url = database_url
        self.readings = readings
        meters = max(1, readings // 1000)
        rows = np.zeros(readings, dtype=READING_ROW)
        rows["fields"], rows["meter_len"], rows["time_len"], rows["value_len"] = 3, 16, 8, 8
        ids = np.frombuffer(b"".join(uuid.uuid4().bytes for _ in range(meters)), dtype="V16")
        per_meter = readings // meters
        rows["meter"] = np.repeat(ids, per_meter)[:readings]
        times = start_ms + np.tile(np.arange(per_meter, dtype=np.int64), meters) * INTERVAL_MS
        rows["time"] = (times[:readings] - PG_EPOCH_MS) * 1000
        rows["value"] = np.arange(readings, dtype=np.float64)
        self.data = COPY_HEADER + rows.tobytes() + COPY_TRAILER
        self._pg: psycopg.AsyncConnection[Any] | None = None

    @property
    def pg(self) -> psycopg.AsyncConnection[Any]:
        assert self._pg is not None, "create() first"
        return self._pg

    async def create(self) -> None:
        self._pg = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        await self.pg.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        await self.pg.execute("CREATE SCHEMA bench")
        await self.pg.execute(
            "CREATE TABLE bench.readings (LIKE telemetry.readings INCLUDING ALL) "
            "PARTITION BY RANGE (time)"
        )
        cursor = await self.pg.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid), c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'telemetry.readings'::regclass"
        )
        for bound, name in await cursor.fetchall():
            await self.pg.execute(f"CREATE TABLE bench.{name} PARTITION OF bench.readings {bound}")

    async def drop(self) -> None:
        await self.pg.execute("DROP SCHEMA bench CASCADE")
        await self.pg.close()

    async def empty(self) -> None:
        await self.pg.execute("TRUNCATE bench.readings")

    async def run(self) -> float:
        """One COPY of every reading in one transaction; readings/s."""
        started = time.perf_counter()
        async with (
            self.pg.transaction(),
            self.pg.cursor().copy(
                "COPY bench.readings (meter_id, time, value) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            for offset in range(0, len(self.data), 1 << 20):
                await copy.write(self.data[offset : offset + (1 << 20)])
        return self.readings / (time.perf_counter() - started)


# Not a dependency of the project: `--profile` asks for it to be installed in the venv.
PY_SPY = Path(sys.executable).with_name("py-spy")


class Profiler:
    """With --profile DIR: py-spy samples the ingest process during each measured phase
    (DIR/<phase>.txt, collapsed stacks)."""

    def __init__(self, directory: str | None, pid: int) -> None:
        self.directory = Path(directory) if directory else None
        self.pid = pid
        self.py_spy = Path(sys.executable).with_name("py-spy")
        if self.directory is not None and not self.py_spy.exists():
            raise SystemExit(
                f"--profile needs py-spy: {Path(sys.executable)} -m pip install py-spy"
            )

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = await asyncio.create_subprocess_exec(
            str(PY_SPY),
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
    values = [float(i) for i in range(1000)]

    async def meter(index: int, meter_id: str) -> int:
        client = ReadingStream(channels[index % CHANNELS], key, max_unacked_batches=4)
        for offset in range(0, readings, 1000):
            count = min(1000, readings - offset)
            first = start_ms + offset * INTERVAL_MS
            times = range(first, first + count * INTERVAL_MS, INTERVAL_MS)
            await client.send(meter_id, times, values[:count], batch_id=f"{run}-{offset}")
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
        async with ReadingConsumers(mesh.nats_url) as consumers:
            results = await measure(args, mesh, consumers, bare.pid, bare_port)
    finally:
        bare.terminate()
        bare.wait()
        mesh.stop()
    # A run leaves gigabytes of PostgreSQL data behind; kept (with the logs) only on failure.
    shutil.rmtree(data_dir, ignore_errors=True)
    report(args, results)


@dataclass
class Results:
    copy_rate: float = 0.0
    # Readings/s of each run of a phase (first, replay, fresh_ids, envoy, bare, singles, live).
    runs: dict[str, list[float]] = field(default_factory=dict)
    accepted: int = 0
    stored: dict[str, int] = field(default_factory=dict)
    # Per consumer: readings/s worked through, and whether it caught up within the window.
    consumers: dict[str, tuple[float, bool]] = field(default_factory=dict)
    consumer_window: float = 0.0
    phase_rss: dict[str, int] = field(default_factory=dict)
    rss: int = 0
    cpu: list[str] = field(default_factory=list)

    @property
    def rates(self) -> dict[str, float]:
        """The best run of each phase (the raw COPY is the best of as many)."""
        return {name: max(rates) for name, rates in self.runs.items()}


def months_of(times_ms: list[int]) -> list[int]:
    """One time (ms) in each distinct UTC month among these."""
    months: dict[str, int] = {}
    for ms in times_ms:
        months.setdefault(str(np.datetime64(ms, "ms").astype("datetime64[M]")), ms)
    return list(months.values())


async def measure(
    args: argparse.Namespace,
    mesh: Mesh,
    consumers: ReadingConsumers,
    bare_pid: int,
    bare_port: int,
) -> Results:
    meters, readings, runs = args.meters, args.readings * args.scale, args.runs
    total = meters * readings
    results = Results()
    day = 86_400_000
    span = readings * INTERVAL_MS
    # Each write of new data gets its own time range: the first writes, the writes through
    # Envoy, the one with consumers running. Replays repeat the first write's range.
    ranges = 2 * runs + 1
    first_start = int(time.time() * 1000) // day * day - ranges * span - day
    starts = [first_start + n * span for n in range(ranges)]
    singles = 10_000 * args.scale
    singles_start = first_start - 200 * day
    singles_end = singles_start + (runs * singles - 1) * INTERVAL_MS
    months = months_of([*starts, *(s + span - 1 for s in starts), singles_start, singles_end])
    meter_ids, key = await setup_fleet(mesh.gateway_url, meters)
    # Meters of their own for the warm-up and the single-reading phase: readings of one meter
    # months apart would make analytics spread the counter's difference over every quarter
    # hour in between.
    warm_ids, warm_key = await setup_fleet(mesh.gateway_url, 10 + len(months))
    (single_id,), single_key = await setup_fleet(mesh.gateway_url, 1)
    direct = mesh.service_address("telemetry")
    gateway = mesh.gateway_url.removeprefix("http://")
    database_url = mesh.database_url
    print(f"{meters} meters x {readings} readings = {total:,} per run\n", flush=True)
    cpu = CpuMeter(
        {
            "bench": os.getpid(),
            "telemetry": mesh.process("telemetry").pid,
            "postgres": mesh.process("postgres").pid,
            "envoy": mesh.process("envoy").pid,
            "analytics": mesh.process("analytics").pid,
            "devices": mesh.process("devices").pid,
            "auth": mesh.process("auth").pid,
            "nats": mesh.process("nats").pid,
            "bare": bare_pid,
        }
    )

    neighbours_budget = NEIGHBOURS_BUDGET_SECONDS

    async def settle() -> None:
        nonlocal neighbours_budget
        await wait_outbox_empty(database_url)
        await checkpoint(database_url)
        started = time.monotonic()
        await wait_idle(cpu, neighbours_seconds=min(10.0, neighbours_budget))
        neighbours_budget = max(0.0, neighbours_budget - (time.monotonic() - started))

    # The load generator's long-lived objects (modules, the mesh, the fleet): out of the
    # cyclic collector's way, as the services do once started.
    gc.freeze()
    # The consumers of telemetry's events stay paused until every ingest phase is measured.
    await consumers.pause()
    published = await consumers.published()
    # Warm-up, not measured: connections and caches (ten meters), and the partition of every
    # month the phases and the raw COPY write to (a reading each).
    _, accepted_total = await end_to_end(direct, warm_key, warm_ids[:10], 1000, starts[0], "w")
    for meter_id, ms in zip(warm_ids[10:], months, strict=True):
        accepted_total += (await end_to_end(direct, warm_key, [meter_id], 1, ms, "w"))[1]
    profiler = Profiler(args.profile, mesh.process("telemetry").pid)
    results.phase_rss["warm-up"] = peak_rss(profiler.pid)
    raw = RawCopy(database_url, total, first_start)
    await raw.create()

    async def copy_run(n: int) -> None:
        await raw.empty()
        await settle()
        cpu.start()
        rate = await raw.run()
        cpu.stop(f"copy {n}", total / rate, total)
        results.runs.setdefault("copy", []).append(rate)

    async def load(name: str, target: str, start: int, run: str) -> int:
        nonlocal accepted_total
        await settle()
        async with profiler.phase(name):
            cpu.start()
            started = time.perf_counter()
            rate, accepted = await end_to_end(target, key, meter_ids, readings, start, run)
            cpu.stop(name, time.perf_counter() - started, total)
        results.runs.setdefault(name.split(" ")[0], []).append(rate)
        results.phase_rss[name] = peak_rss(profiler.pid)
        if name in (f"first {runs}", f"replay {runs}", "fresh_ids"):
            results.stored[name] = await stored_count(database_url, meter_ids)
        accepted_total += accepted
        return accepted

    # The raw COPY runs alternate with the first writes: on a shared machine, each write is
    # measured next to a baseline taken in the same conditions.
    for n in range(runs):
        await copy_run(n + 1)
        results.accepted += await load(f"first {n + 1}", direct, starts[n], f"a{n}")
    await raw.drop()
    results.copy_rate = max(results.runs["copy"])
    for n in range(runs):  # a replay stores nothing: it can be repeated
        await load(f"replay {n + 1}", direct, starts[0], "a0")
    await load("fresh_ids", direct, starts[0], "b")
    for n in range(runs):
        await load(f"envoy {n + 1}", gateway, starts[runs + n], f"c{n}")
    # One reading per message, alternating between the bare server and the service; each run
    # of the service writes a range of its own.
    metadata = (("authorization", f"Bearer {single_key}"),)
    for n in range(runs):
        start = singles_start + n * singles * INTERVAL_MS
        await settle()
        cpu.start()
        rate = await single_readings(f"127.0.0.1:{bare_port}", metadata, single_id, singles, start)
        cpu.stop(f"bare {n + 1}", singles / rate, singles)
        results.runs.setdefault("bare", []).append(rate)
        await settle()
        async with profiler.phase(f"singles {n + 1}"):
            cpu.start()
            rate = await single_readings(direct, metadata, single_id, singles, start)
            cpu.stop(f"singles {n + 1}", singles / rate, singles)
        results.runs.setdefault("singles", []).append(rate)
        accepted_total += singles
    await settle()

    # The consumers, resumed, work through the events of every phase above.
    events = await consumers.published() - published
    per_event = accepted_total / max(events, 1)
    window = results.consumer_window = args.consumer_seconds
    for name in await consumers.names():  # one at a time: each has the machine to itself
        await consumers.resume([name])
        cpu.start()
        acked, seconds = (await consumers.drain(window))[name]
        cpu.stop(name.split("-")[0], seconds, int(per_event * acked))
        await consumers.pause([name])
        results.consumers[name] = (acked * per_event / seconds, seconds < window)
    await consumers.resume()

    # Ingest again while the consumers run (still busy with that backlog), as deployed.
    await wait_outbox_empty(database_url)
    await checkpoint(database_url)
    cpu.start()
    started = time.perf_counter()
    live_rate, _ = await end_to_end(direct, key, meter_ids, readings, starts[-1], "d")
    cpu.stop("live", time.perf_counter() - started, total)
    results.runs["live"] = [live_rate]
    results.rss = peak_rss(mesh.process("telemetry").pid)
    results.cpu = cpu.report()
    return results


def report(args: argparse.Namespace, results: Results) -> None:
    meters = args.meters
    copy_rate, rates = results.copy_rate, results.rates
    e2e_rate = rates["first"]
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
        rates["envoy"],
        f"{rates['envoy'] / copy_rate:.2f}x of (1)  (target >= 0.6x)",
    )
    line(
        "(2) replay of (2), same batch ids (dedupe by batch id)",
        rates["replay"],
        f"{rates['replay'] / e2e_rate:.2f}x of first write (target >= 2x)",
    )
    line(
        "(2) replay of (2), new batch ids (dedupe by (meter, time))",
        rates["fresh_ids"],
        f"{rates['fresh_ids'] / e2e_rate:.2f}x of first write",
    )
    line(
        "(2) end-to-end, client -> service, consumers running",
        rates["live"],
        f"{rates['live'] / copy_rate:.2f}x of (1)  (no target)",
    )
    line("(3) bare gRPC stream, 1 reading per message, discarded", rates["bare"], "1.00x")
    line(
        "(3) StreamReadings, 1 reading per message, stored",
        rates["singles"],
        f"{rates['singles'] / rates['bare']:.2f}x of bare (target >= 0.5x)",
    )
    for name, (rate, caught_up) in sorted(results.consumers.items()):
        line(
            f"(4) consumer {name}, working off the backlog",
            rate,
            "caught up: at least this" if caught_up else f"for {results.consumer_window:.0f} s",
        )
    print()
    print(
        "(1)-(3) are measured with telemetry's event consumers (analytics rollups, devices\n"
        "last_seen) paused, each phase after a CHECKPOINT once the outbox is published and the\n"
        "mesh is idle; (1) alternates with the direct runs of (2). (4) is each consumer\n"
        "afterwards, one at a time, in readings/s of the events it acknowledged. 'consumers\n"
        "running' is ingest while they work through that backlog, as deployed."
    )
    stored, runs = results.stored, args.runs
    written = stored[f"first {runs}"]
    replayed = stored[f"replay {runs}"]
    print(
        f"stored after the first writes: {written:,} (accepted {results.accepted:,} "
        f"of {runs} x {meters * args.readings * args.scale:,})"
    )
    print(
        f"stored after the replays:      {replayed:,} / {stored['fresh_ids']:,} "
        f"(nothing new: {written == replayed == stored['fresh_ids']})"
    )
    print(
        "runs (readings/s): "
        + "; ".join(
            f"{name} " + ", ".join(f"{rate:,.0f}" for rate in rates)
            for name, rates in results.runs.items()
            if len(rates) > 1
        )
        + f"; the best of {runs} is reported, as for (1)"
    )
    print(
        f"ingest process peak RSS: {results.rss / 2**20:.0f} MiB with {meters} concurrent "
        "streams (target < 300 MiB)"
    )
    print(
        "ingest peak RSS after each phase: "
        + ", ".join(f"{name} {value / 2**20:.0f} MiB" for name, value in results.phase_rss.items())
    )
    print(f"cores: {os.cpu_count()}; client, service, PostgreSQL and Envoy share them")
    print("\nCPU seconds per phase (process trees; bench: the load generator; outside: the rest")
    print("of the machine; us/reading: the mesh's CPU per reading or message; consumers: per")
    print("reading of the events worked through)")
    print("\n".join(results.cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=1000, help="per meter and run")
    parser.add_argument("--scale", type=int, default=1, help="multiplies readings per meter")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs of (1) and of each new write in (2), best kept"
    )
    parser.add_argument(
        "--consumer-seconds",
        type=float,
        default=5.0,
        help="how long the event consumers are watched working off the backlog",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="sample the ingest process with py-spy per phase"
    )
    args = parser.parse_args()
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
