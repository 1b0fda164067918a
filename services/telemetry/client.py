"""A small client for meters and head-end systems that stream readings to EnergyMesh.

    async with ReadingStream("127.0.0.1:8080", credential="emk_…") as stream:
        await stream.add(meter_id, time_unix_ms, 1234.5)        # buffered per meter
        await stream.send(meter_id, times, values)              # or a whole batch at once
    # leaving the block flushes: every reading added is committed, or an error was raised

What it does for you:

- batches readings per meter (`batch_size` readings, or whatever is buffered after
  `linger_seconds`) into packed ReadingBatch columns, each with a unique batch id;
- streams them over one long-lived SyncReadings call, which acknowledges each batch once the
  server has committed it;
- keeps every batch until its acknowledgement arrives; after a disconnect (server restart,
  UNAVAILABLE, network) it reconnects with exponential backoff and jitter and resends the
  unacknowledged batches with the same batch ids, so the server stores each reading once;
- bounds its own memory: `add`/`send` wait while `max_unacked_batches` are in flight;
- `flush()` sends what is buffered and waits for the acknowledgements; `close()` flushes.

Errors that retrying cannot fix (a wrong or revoked credential: UNAUTHENTICATED; a meter the
credential may not write: NOT_FOUND in the batch's ack; a malformed batch) are raised by the
next `add`, `send`, `flush` or `close` as `IngestError`. A batch refused whole is reported in
`rejected_batches` and, unless `raise_on_rejected_batch=False`, raised too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import grpc

from energymesh.telemetry.v1 import telemetry_pb2

SYNC_READINGS = "/energymesh.telemetry.v1.TelemetryService/SyncReadings"
# Codes after which the same batches may simply be sent again.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class IngestError(Exception):
    """Something retrying cannot fix; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter between reconnection attempts."""

    initial_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    multiplier: float = 2.0
    # Give up (raise IngestError UNAVAILABLE) after this many failed attempts in a row;
    # None: keep trying until close() is called with a deadline.
    max_attempts: int | None = None

    def delay(self, attempt: int) -> float:
        ceiling = min(
            self.max_backoff_seconds, self.initial_backoff_seconds * self.multiplier**attempt
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not secrecy


@dataclass
class _Buffer:
    times: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class ReadingStream:
    """One SyncReadings connection carrying the batches of one credential (a meter token:
    its meter; an ingest key or user token: any meter it may write)."""

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        credential: str,
        *,
        batch_size: int = 1000,
        max_unacked_batches: int = 32,
        linger_seconds: float = 1.0,
        retry: RetryPolicy | None = None,
        batch_id_prefix: str | None = None,
        raise_on_rejected_batch: bool = True,
        on_ack: Callable[[telemetry_pb2.BatchResult], None] | None = None,
    ) -> None:
        if isinstance(target, str):
            self._channel: grpc.aio.Channel = grpc.aio.insecure_channel(target)
            self._own_channel = True
        else:
            self._channel = target
            self._own_channel = False
        # Only the one method (a whole stub builds a callable per RPC: noticeable with a
        # thousand streams on one channel).
        self._sync_readings = self._channel.stream_stream(
            SYNC_READINGS,
            request_serializer=_serialize,
            response_deserializer=telemetry_pb2.BatchAck.FromString,
        )
        self._metadata = (("authorization", f"Bearer {credential}"),)
        self.batch_size = batch_size
        self.max_unacked = max_unacked_batches
        self.linger = linger_seconds
        self.retry = retry or RetryPolicy()
        # Made on first use: callers that name their batches never need it.
        self._prefix = batch_id_prefix
        self._sequence = 0
        self._raise_rejected = raise_on_rejected_batch
        self._on_ack = on_ack
        self._buffers: dict[str, _Buffer] = {}
        # Sent or to send, not yet acknowledged, in order: what a reconnect resends.
        self._pending: dict[str, telemetry_pb2.ReadingBatch] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self._error: IngestError | None = None
        self._task: asyncio.Task[None] | None = None
        self._linger_task: asyncio.Task[None] | None = None
        # What the server answered, for callers that count.
        self.acked_batches = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected_readings = 0
        self.reconnects = 0
        self.rejected_batches: list[telemetry_pb2.BatchResult] = []

    # --- public API ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.abort()

    @property
    def unacked(self) -> int:
        """Batches sent (or queued) and not yet acknowledged."""
        return len(self._pending)

    async def add(self, meter_id: str, time_unix_ms: int, value: float) -> None:
        """Buffers one reading; a full buffer becomes a batch."""
        buffer = self._buffers.setdefault(meter_id, _Buffer())
        buffer.times.append(time_unix_ms)
        buffer.values.append(value)
        if len(buffer.times) >= self.batch_size:
            del self._buffers[meter_id]
            await self._enqueue(meter_id, buffer.times, buffer.values)
        else:
            self._ensure_linger()

    async def send(
        self,
        meter_id: str,
        times_unix_ms: Sequence[int],
        values: Sequence[float],
        batch_id: str | None = None,
    ) -> str:
        """Queues one batch as given (at most 10,000 readings); returns its batch id."""
        return await self._enqueue(meter_id, times_unix_ms, values, batch_id)

    async def flush(self, wait_seconds: float | None = None) -> None:
        """Sends everything buffered and waits until all of it is acknowledged."""
        for meter_id in list(self._buffers):
            buffer = self._buffers.pop(meter_id)
            await self._enqueue(meter_id, buffer.times, buffer.values)
        async with asyncio.timeout(wait_seconds):
            while self._pending:
                self._raise_if_failed()
                self._changed.clear()
                if self._pending:
                    await self._changed.wait()
        self._raise_if_failed()

    async def close(self, wait_seconds: float | None = None) -> None:
        """Flushes, ends the call and releases the channel."""
        try:
            await self.flush(wait_seconds)
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Stops at once; unacknowledged batches are dropped (the server may or may not have
        committed them: resend them with the same ids to be sure)."""
        self._closing = True
        self._changed.set()
        for task in (self._task, self._linger_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._own_channel:
            await self._channel.close()

    # --- internals -------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _next_batch_id(self) -> str:
        if self._prefix is None:
            self._prefix = uuid.uuid4().hex[:16]
        self._sequence += 1
        return f"{self._prefix}-{self._sequence}"

    async def _enqueue(
        self,
        meter_id: str,
        times: Sequence[int],
        values: Sequence[float],
        batch_id: str | None = None,
    ) -> str:
        self._raise_if_failed()
        while len(self._pending) >= self.max_unacked:
            self._changed.clear()
            await self._changed.wait()
            self._raise_if_failed()
        batch_id = batch_id or self._next_batch_id()
        self._pending[batch_id] = telemetry_pb2.ReadingBatch(
            batch_id=batch_id, meter_id=meter_id, time_unix_ms=times, values=values
        )
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return batch_id

    def _ensure_linger(self) -> None:
        if self._linger_task is None and self.linger > 0:
            self._linger_task = asyncio.create_task(self._linger_loop())

    async def _linger_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.linger / 2)
            now = time.monotonic()
            for meter_id, buffer in list(self._buffers.items()):
                if now - buffer.since >= self.linger and self._buffers.get(meter_id) is buffer:
                    del self._buffers[meter_id]
                    await self._enqueue(meter_id, buffer.times, buffer.values)

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            call: grpc.aio.StreamStreamCall[telemetry_pb2.ReadingBatch, telemetry_pb2.BatchAck] = (
                self._sync_readings(metadata=self._metadata)
            )
            writer = asyncio.create_task(self._write(call))
            try:
                async for ack in call:
                    attempt = 0
                    self._acknowledged(ack.result)
                await writer
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in RETRYABLE:
                    self._fail(IngestError(code, error.details() or ""))
                    return
                if self.retry.max_attempts is not None and attempt >= self.retry.max_attempts:
                    self._fail(IngestError(code, f"gave up after {attempt} attempts"))
                    return
                self.reconnects += 1
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
            except IngestError as error:
                self._fail(error)
                return
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                call.cancel()

    async def _write(
        self, call: grpc.aio.StreamStreamCall[telemetry_pb2.ReadingBatch, telemetry_pb2.BatchAck]
    ) -> None:
        sent: set[str] = set()
        while True:
            self._changed.clear()
            for batch_id, batch in list(self._pending.items()):
                if batch_id not in sent:
                    await call.write(batch)
                    sent.add(batch_id)
            if self._closing and all(batch_id in sent for batch_id in self._pending):
                await call.done_writing()
                return
            if all(batch_id in sent for batch_id in self._pending):
                await self._changed.wait()

    def _acknowledged(self, result: telemetry_pb2.BatchResult) -> None:
        batch = self._pending.pop(result.batch_id, None)
        self._changed.set()
        if batch is None:
            return  # an ack for a batch resent and already acknowledged
        self.acked_batches += 1
        if self._on_ack is not None:
            self._on_ack(result)
        if result.status.code:
            self.rejected_batches.append(result)
            if self._raise_rejected:
                self._fail(
                    IngestError(grpc.StatusCode(_code(result.status.code)), result.status.message)
                )
            return
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.rejected_readings += sum(count.count for count in result.rejected)

    def _fail(self, error: IngestError) -> None:
        if self._error is None:
            self._error = error
        self._changed.set()


def _serialize(batch: telemetry_pb2.ReadingBatch) -> bytes:
    return batch.SerializeToString()


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value
