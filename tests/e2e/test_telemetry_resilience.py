"""Telemetry under failure: the ingest process killed mid-stream, NATS stopped, PostgreSQL
stopped or frozen. Every acknowledged reading is stored exactly once; memory stays bounded."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import httpx
import nats
import psycopg
import pytest

from energymesh.telemetry.v1 import telemetry_pb2
from services.launcher.mesh import Mesh
from services.telemetry.client import ReadingStream, RetryPolicy
from tests.e2e.helpers import find_event
from tests.e2e.telemetry_steps import (
    MINUTE_MS,
    batch,
    duplicate_keys,
    fleet,
    ingest_status,
    now_ms,
    stored,
    stream,
    stub,
)

DAY_MS = 86_400_000
FAST_RETRY = RetryPolicy(initial_backoff_seconds=0.1, max_backoff_seconds=1.0)


async def produce(client: ReadingStream, meter_id: str, start: int, batches: int) -> int:
    """Sends `batches` batches of 100 readings for one meter; returns how many readings."""
    for i in range(batches):
        times = [start + (i * 100 + j) * MINUTE_MS for j in range(100)]
        await client.send(meter_id, times, [float(j) for j in range(100)])
        await asyncio.sleep(0.01)
    return batches * 100


async def test_sigkill_mid_stream_then_resume_stores_each_reading_once(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    f = await fleet(http, meters=5)
    start = now_ms() - 30 * DAY_MS
    async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as channel:
        clients = [ReadingStream(channel, f.ingest_key, retry=FAST_RETRY) for _ in f.meter_ids]
        producers = [
            asyncio.create_task(produce(client, meter, start, 60))
            for client, meter in zip(clients, f.meter_ids, strict=True)
        ]
        while sum(client.acked_batches for client in clients) < 40:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        mesh.signal_service("telemetry", signal.SIGKILL)
        mesh.wait_service("telemetry", timeout=10)
        acked_at_kill = sum(client.acked_batches for client in clients)
        mesh.restart_service("telemetry")
        sent = sum(await asyncio.gather(*producers))
        for client in clients:
            await client.close(wait_seconds=60)
    assert 40 <= acked_at_kill < 300
    assert sum(client.reconnects for client in clients) >= 1
    assert await stored(mesh, f.meter_ids) == sent == 30_000
    assert await duplicate_keys(mesh, f.meter_ids) == 0


async def test_ingest_commits_while_nats_is_down_and_events_follow(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    f = await fleet(http)
    meter = f.meter_ids[0]
    mesh.stop_nats()
    try:
        async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as channel:
            summary = await stream(
                channel,
                [batch(meter, now_ms() - DAY_MS, 20, batch_id="while-nats-down")],
                f.token_metadata(),
            )
        assert summary.accepted == 20
    finally:
        mesh.start_nats()
    client = await nats.connect(mesh.nats_url)
    try:
        event = await find_event(
            client,
            "telemetry.readings.committed",
            lambda e: e.get("meterId") == meter,
            wait_seconds=30,
        )
    finally:
        await client.close()
    assert event["batchIds"] == ["while-nats-down"]
    assert event["count"] == 20


async def test_postgres_down_means_unavailable_then_retries_complete(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    f = await fleet(http)
    meter, start = f.meter_ids[0], now_ms() - 5 * DAY_MS
    async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as channel:
        client = ReadingStream(channel, f.ingest_key, retry=FAST_RETRY)
        await client.send(meter, [start], [1.0])
        await client.flush(wait_seconds=30)
        mesh.stop_postgres()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream(channel, [batch(meter, start + DAY_MS, 10)], f.key_metadata())
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            for i in range(10):
                await client.send(meter, [start + (i + 1) * MINUTE_MS], [2.0])
            await asyncio.sleep(3)
            assert client.acked_batches == 1  # nothing acknowledged while the database is down
        finally:
            mesh.start_postgres()
        await client.close(wait_seconds=90)
    assert client.acked_batches == 11
    assert await stored(mesh, [meter]) == 11


async def test_frozen_postgres_keeps_ingest_memory_bounded(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    """100 clients push as fast as they can while PostgreSQL is frozen (SIGSTOP) for 20 s:
    the ingest process stops reading from them at its buffer limit (its own gauges say so),
    and after SIGCONT every acknowledged reading is stored."""
    f = await fleet(http, meters=100)
    status = await ingest_status(mesh, f.admin)
    limit = status.buffer_limit_bytes
    start = now_ms() - 3000 * DAY_MS  # every batch in the past: none is quarantined
    acked: list[telemetry_pb2.BatchResult] = []
    sent = dict.fromkeys(f.meter_ids, 0)
    stop = asyncio.Event()
    failed: list[str] = []

    async def push(channel: grpc.aio.Channel, meter: str) -> None:
        call: Any = stub(channel).SyncReadings(metadata=f.key_metadata())

        async def read_acks() -> None:
            async for ack in call:
                acked.append(ack.result)

        reader = asyncio.create_task(read_acks())
        i = 0
        try:
            while not stop.is_set():
                await call.write(
                    batch(meter, start + i * 1000 * MINUTE_MS, 1000, batch_id=f"{meter}:{i}")
                )
                sent[meter] += 1
                i += 1
            await call.done_writing()
            await reader
        except grpc.aio.AioRpcError:
            # A commit that needed a new database connection during the freeze failed with
            # UNAVAILABLE: this stream ended; nothing unacknowledged counts as stored.
            failed.append(meter)
            reader.cancel()

    async with grpc.aio.insecure_channel(mesh.service_address("telemetry")) as channel:
        pushers = [asyncio.create_task(push(channel, meter)) for meter in f.meter_ids]
        await asyncio.sleep(1)
        mesh.signal_postgres(signal.SIGSTOP)
        try:
            await asyncio.sleep(20)
            frozen = await ingest_status(mesh, f.admin)
            acked_while_frozen = len(acked)
            await asyncio.sleep(1)
            assert len(acked) == acked_while_frozen  # nothing is acknowledged while frozen
        finally:
            mesh.signal_postgres(signal.SIGCONT)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*pushers), 120)
    # The process stopped reading at its limit: the buffer is full, streams are waiting, and
    # it never held more than the limit plus one batch per stream.
    one_batch = 1000 * 17 + 256
    assert frozen.buffered_bytes >= limit - 100 * one_batch
    assert frozen.waiting_streams >= 50
    assert frozen.peak_buffered_bytes <= limit + 100 * one_batch
    assert frozen.peak_rss_bytes < 300 * 2**20
    assert sum(sent.values()) * 17_000 > 2 * limit  # clients did push far more than that
    ok = [result for result in acked if result.status.code == 0]
    assert len(failed) < 50
    assert len(ok) >= sum(sent.values()) - 200 * len(failed)
    async with await psycopg.AsyncConnection.connect(mesh.database_url) as connection:
        cursor = await connection.execute(
            "SELECT batch_id FROM telemetry.batches WHERE meter_id = ANY(%s::uuid[])",
            (f.meter_ids,),
        )
        committed = {row[0] for row in await cursor.fetchall()}
    assert {result.batch_id for result in ok} <= committed  # every ack was a commit
    assert await stored(mesh, f.meter_ids) >= sum(result.accepted for result in ok)
    assert await duplicate_keys(mesh, f.meter_ids) == 0
