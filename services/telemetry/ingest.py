"""Exactly-once ingest: per-reading validation, bounded memory (backpressure) and the
group-commit writer.

A stream handler decodes each ReadingBatch into numpy columns (`prepare`), classifies every
reading (`classify`), waits for room in the `IngestBuffer` and hands the batch to the
`GroupCommitWriter`. The writer takes whatever batches are queued (from every stream, up to
max_group_readings) and commits them in one transaction:

1. batch ids already committed for their meter are answered with the stored result and
   skipped (a batch id repeated inside the group follows its first occurrence);
2. the valid readings are COPYed (binary format, built with numpy) into a per-connection
   temporary staging table, then `INSERT … SELECT … ON CONFLICT DO NOTHING` moves them into
   the partitioned readings table; when fewer rows went in than were staged, the stored value
   of every staged reading that was not written by this transaction (`xmin`) is read back:
   the same value is a duplicate, a different one a conflict (quarantined; first write wins);
3. quarantined readings, the batch results (keyed by batch id) and one outbox event per meter
   (telemetry.readings.committed) are written in the same transaction.

Only after COMMIT are the batches' futures resolved, which is what acknowledges them. If the
database fails, every batch of the group fails with UNAVAILABLE and nothing is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import sqlalchemy.exc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2
from psycopg.types.json import Jsonb

from energymesh.telemetry.v1 import events_pb2, telemetry_pb2
from services.kernel.errors import DomainError, Unavailable
from services.kernel.outbox import Outbox, event_headers
from services.telemetry.events import READINGS_COMMITTED
from services.telemetry.partitions import Partitions

log = logging.getLogger(__name__)

Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Reasons = npt.NDArray[np.int8]

R = telemetry_pb2
NOT_FINITE = R.REJECT_REASON_NOT_FINITE
IN_FUTURE = R.REJECT_REASON_IN_FUTURE
TOO_OLD = R.REJECT_REASON_TOO_OLD
NEGATIVE_COUNTER = R.REJECT_REASON_NEGATIVE_COUNTER
IMPLAUSIBLE = R.REJECT_REASON_IMPLAUSIBLE
CONFLICT = R.REJECT_REASON_CONFLICT
REASONS = (NOT_FINITE, IN_FUTURE, TOO_OLD, NEGATIVE_COUNTER, IMPLAUSIBLE, CONFLICT)

FUTURE_TOLERANCE_MS = 5 * 60 * 1000
# Batches this small are classified reading by reading in Python (numpy's fixed cost per
# call dominates below this).
SMALL_BATCH = 16
# Beyond this, no register of any unit is plausible.
MAX_ABS_VALUE = 1e15
# devices.v1.RegisterType: CUMULATIVE = 1, INTERVAL = 2 (counters: never negative).
COUNTER_REGISTERS = frozenset({1, 2})
CUMULATIVE = 1

# PostgreSQL's binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, where timestamptz counts from
READING_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("meter_len", ">i4"),
        ("meter", "V16"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
COPY_READINGS = "COPY telemetry.readings (meter_id, time, value) FROM STDIN (FORMAT BINARY)"
COPY_STAGING = (
    "COPY telemetry_ingest_staging (meter_id, time, value, seq) FROM STDIN (FORMAT BINARY)"
)
COMMITTERS = 2
CONNECT_TIMEOUT_SECONDS = 3
PING_AFTER_IDLE_SECONDS = 1.0
COPY_CHUNK_BYTES = 128 * 1024
# A second commit starts while one is in flight only for at least this many queued readings:
# small batches (one reading per message) then gather into one group while the first commit
# runs, instead of paying a transaction each.
PARALLEL_MIN_READINGS = 10_000
# Groups smaller than that start at most this often: a stream of one-reading messages is
# committed in groups of many messages (each transaction, outbox event and fsync costs as
# much as thousands of readings); acks still follow the commits.
SMALL_GROUP_INTERVAL_SECONDS = 0.05
# After a direct COPY met stored keys, groups go through staging straight away for this long
# (a replay comes as a run of groups; new data after it goes direct again).
DIRECT_BACKOFF_SECONDS = 1.0
STAGING_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("meter_len", ">i4"),
        ("meter", "V16"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("seq_len", ">i4"),
        ("seq", ">i4"),
    ]
)
CREATE_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS telemetry_ingest_staging "
    "(meter_id uuid NOT NULL, time timestamptz NOT NULL, value float8 NOT NULL, "
    "seq int4 NOT NULL) ON COMMIT DELETE ROWS"
)
INSERT_STAGED = """
    WITH inserted AS (
        INSERT INTO telemetry.readings (meter_id, time, value)
        SELECT meter_id, time, value FROM telemetry_ingest_staging
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM inserted
"""
# Rows this transaction did not write were stored before (or by a concurrent writer). One
# index lookup per staged key (LIMIT 1 keeps the subquery from being flattened into a join),
# whatever the size of readings: as a join, the planner hashes the whole table instead, which
# reads millions of rows to find 50,000.
STORED_BEFORE = """
    SELECT s.seq, r.value
    FROM telemetry_ingest_staging s
    CROSS JOIN LATERAL (
        SELECT r.value, r.xmin FROM telemetry.readings r
        WHERE r.meter_id = s.meter_id AND r.time = s.time
        LIMIT 1
    ) r
    WHERE r.xmin <> pg_current_xact_id()::xid
"""
COPY_STORED_BEFORE = f"COPY ({STORED_BEFORE}) TO STDOUT (FORMAT BINARY)"
COPY_BATCHES = (
    "COPY telemetry.batches (meter_id, batch_id, organization_id, result, commit_time) FROM STDIN"
)
COPY_OUTBOX = "COPY telemetry.outbox (id, subject, payload, headers) FROM STDIN"
BATCHES_DONE = """
    SELECT b.meter_id::text, b.batch_id, b.result
    FROM telemetry.batches b
    JOIN unnest(%s::uuid[], %s::text[]) AS k(meter_id, batch_id)
      ON b.meter_id = k.meter_id AND b.batch_id = k.batch_id
"""
DATABASE_ERRORS = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class MeterRules:
    """What plausibility needs to know about a meter's register."""

    register_type: int
    rollover_value: float | None = None


def classify(
    times: Int64s,
    values: Floats,
    rules: MeterRules | None,
    now_ms: int,
    horizon_ms: int,
) -> Reasons:
    """Per reading: 0 if valid, else the (first) RejectReason that applies."""
    if len(times) <= SMALL_BATCH:
        return np.array(
            [
                classify_one(int(t), float(v), rules, now_ms, horizon_ms)
                for t, v in zip(times.tolist(), values.tolist(), strict=True)
            ],
            dtype=np.int8,
        )
    reasons = np.zeros(len(times), dtype=np.int8)
    if all_valid(times, values, rules, now_ms, horizon_ms):
        return reasons

    def mark(mask: npt.NDArray[np.bool_], reason: int) -> None:
        reasons[(reasons == 0) & mask] = reason

    with np.errstate(invalid="ignore"):
        mark(~np.isfinite(values), NOT_FINITE)
        mark(times > now_ms + FUTURE_TOLERANCE_MS, IN_FUTURE)
        mark(times < now_ms - horizon_ms, TOO_OLD)
        if rules is not None and rules.register_type in COUNTER_REGISTERS:
            mark(values < 0, NEGATIVE_COUNTER)
        mark(np.abs(values) > MAX_ABS_VALUE, IMPLAUSIBLE)
        if rules is not None and rules.register_type == CUMULATIVE and rules.rollover_value:
            mark(values > rules.rollover_value, IMPLAUSIBLE)
    return reasons


def all_valid(
    times: Int64s, values: Floats, rules: MeterRules | None, now_ms: int, horizon_ms: int
) -> bool:
    """Whether `classify` would find every reading valid, decided from the extremes alone (a
    handful of reductions instead of a mask per rule: the usual batch). A NaN makes min and
    max NaN, which fails every comparison."""
    if not len(times):
        return True
    lowest, highest = float(values.min()), float(values.max())
    valid = (
        int(times.min()) >= now_ms - horizon_ms
        and int(times.max()) <= now_ms + FUTURE_TOLERANCE_MS
        and lowest >= -MAX_ABS_VALUE
        and highest <= MAX_ABS_VALUE
    )
    if valid and rules is not None and rules.register_type in COUNTER_REGISTERS:
        valid = lowest >= 0
    if valid and rules is not None and rules.register_type == CUMULATIVE and rules.rollover_value:
        valid = highest <= rules.rollover_value
    return valid


def classify_one(
    time_ms: int, value: float, rules: MeterRules | None, now_ms: int, horizon_ms: int
) -> int:
    """`classify` for one reading, without numpy's per-call overhead (tiny batches)."""
    if not math.isfinite(value):
        return NOT_FINITE
    if time_ms > now_ms + FUTURE_TOLERANCE_MS:
        return IN_FUTURE
    if time_ms < now_ms - horizon_ms:
        return TOO_OLD
    counter = rules is not None and rules.register_type in COUNTER_REGISTERS
    if counter and value < 0:
        return NEGATIVE_COUNTER
    if abs(value) > MAX_ABS_VALUE:
        return IMPLAUSIBLE
    if (
        rules is not None
        and rules.register_type == CUMULATIVE
        and rules.rollover_value
        and value > rules.rollover_value
    ):
        return IMPLAUSIBLE
    return 0


def repeats(
    meters: npt.NDArray[np.int32],
    times: Int64s,
    owner: npt.NDArray[np.int32],
    one_batch_per_meter: bool,
) -> tuple[npt.NDArray[np.bool_], Int64s]:
    """Readings of a group repeated inside it (same meter and time): per reading, whether an
    earlier one (in arrival order) has its key, and the position of the first one, which
    leads the key. Readings are concatenated batch by batch (`owner` ascending)."""
    total = len(times)
    leader = np.arange(total, dtype=np.int64)
    if one_batch_per_meter and (
        total < 2 or bool(np.all((np.diff(times) > 0) | (owner[1:] != owner[:-1])))
    ):
        # The usual group: each meter in one batch, its times increasing. Nothing repeats;
        # no sort needed.
        return np.zeros(total, dtype=bool), leader
    order = np.lexsort((leader, times, meters))
    repeated_sorted = np.zeros(total, dtype=bool)
    repeated_sorted[1:] = (meters[order][1:] == meters[order][:-1]) & (
        times[order][1:] == times[order][:-1]
    )
    lead_sorted = np.maximum.accumulate(np.where(repeated_sorted, 0, leader))
    leader[order] = order[lead_sorted]
    repeated = np.zeros(total, dtype=bool)
    repeated[order] = repeated_sorted
    return repeated, leader


@dataclass(eq=False)
class PendingBatch:
    """A validated batch waiting for its commit."""

    index: int
    batch_id: str
    meter_id: str
    organization_id: str
    times: Int64s
    values: Floats
    reasons: Reasons
    future: asyncio.Future[telemetry_pb2.BatchResult]
    stream: StreamBuffer | None = None

    @functools.cached_property
    def nbytes(self) -> int:
        """What the batch holds in memory (counted when queued and again when released)."""
        return int(self.times.nbytes + self.values.nbytes + self.reasons.nbytes) + 256


def pending_batch(
    index: int,
    batch_id: str,
    meter_id: str,
    organization_id: str,
    times: Int64s,
    values: Floats,
    rules: MeterRules | None,
    horizon_ms: int,
) -> PendingBatch:
    now_ms = int(time.time() * 1000)
    return PendingBatch(
        index=index,
        batch_id=batch_id,
        meter_id=meter_id,
        organization_id=organization_id,
        times=times,
        values=values,
        reasons=classify(times, values, rules, now_ms, horizon_ms),
        future=asyncio.get_running_loop().create_future(),
    )


# --- memory bounds ------------------------------------------------------------------------


@dataclass(eq=False)
class StreamBuffer:
    """One stream's share of the ingest buffer."""

    held: int = 0


@dataclass
class IngestStats:
    committed_readings: int = 0
    committed_batches: int = 0
    commits: int = 0


class IngestBuffer:
    """Bounds the decoded readings held between receipt and commit, in total and per stream.

    A stream reads its next batch only when `wait_for_room` returns, i.e. while both its own
    and the total held bytes are under their limits; otherwise it stops reading and HTTP/2
    flow control pushes back on the client. Bytes are released once their batch is
    committed (or failed). The total can exceed the limit by at most one batch per stream
    woken at the same moment."""

    def __init__(self, limit_bytes: int, stream_limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.stream_limit = stream_limit_bytes
        self.held = 0
        self.peak = 0
        self.open_streams = 0
        self.waiting = 0
        self._changed: asyncio.Future[None] | None = None

    def open(self) -> StreamBuffer:
        self.open_streams += 1
        return StreamBuffer()

    def close(self, _stream: StreamBuffer) -> None:
        self.open_streams -= 1

    def _has_room(self, stream: StreamBuffer) -> bool:
        return self.held < self.limit and stream.held < self.stream_limit

    async def wait_for_room(self, stream: StreamBuffer) -> None:
        if self._has_room(stream):
            return
        self.waiting += 1
        try:
            while not self._has_room(stream):
                if self._changed is None or self._changed.done():
                    self._changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._changed)
        finally:
            self.waiting -= 1

    def add(self, stream: StreamBuffer | None, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        if stream is not None:
            stream.held += nbytes

    def release(self, batches: Iterable[PendingBatch]) -> None:
        for batch in batches:
            self.held -= batch.nbytes
            if batch.stream is not None:
                batch.stream.held -= batch.nbytes
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)


# --- the writer ---------------------------------------------------------------------------


class RetryGroup(Exception):
    """A concurrent writer (another replica) committed some of the same keys first."""


class StoredBefore(Exception):
    """A direct COPY met a reading stored before: the group goes through staging."""


READINGS_COMMITTED_TYPE = events_pb2.ReadingsCommitted()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def json_time_of_ms(ms: int) -> str:
    """A Timestamp in proto3 JSON (RFC 3339, UTC, fractional digits only when not zero)."""
    moment = EPOCH + timedelta(milliseconds=ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def readings_committed_json(
    organization_id: str,
    meter_id: str,
    first_ms: int,
    last_ms: int,
    count: int,
    batch_ids: list[str],
) -> bytes:
    """A ReadingsCommitted in proto3 JSON, exactly as json_format.MessageToJson writes it
    (fields in number order, defaults left out), without building the message: a load of a
    thousand meters queues a thousand events per round of commits."""
    event: dict[str, object] = {}
    if organization_id:
        event["organizationId"] = organization_id
    if meter_id:
        event["meterId"] = meter_id
    event["firstTime"] = json_time_of_ms(first_ms)
    event["lastTime"] = json_time_of_ms(last_ms)
    if count:
        event["count"] = count
    if batch_ids:
        event["batchIds"] = batch_ids
    return json.dumps(event).encode()


def ok_status() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.OK)


@dataclass
class _Outcome:
    """What one commit decided for the batches it wrote."""

    accepted: Int64s
    duplicates: Int64s
    rejected: dict[int, Int64s] = field(default_factory=dict)


class GroupCommitWriter:
    """One writer per process: commits queued batches of every stream together."""

    def __init__(
        self,
        database_url: str,
        outbox: Outbox,
        partitions: Partitions,
        buffer: IngestBuffer,
        max_group_readings: int,
    ) -> None:
        self._database_url = database_url
        # Idle connections, with when they were last used.
        self._connections: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._outbox = outbox
        self._partitions = partitions
        self._buffer = buffer
        self._max_group = max_group_readings
        self._queue: deque[PendingBatch] = deque()
        self._wakeup = asyncio.Event()
        self._staging_until = 0.0
        self._queued_readings = 0
        self._in_flight = 0
        self._last_start = 0.0
        self.stats = IngestStats()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the writer's own, kept between groups (one per committer): a
        group's transaction is a handful of statements, and a pool checkout with its ping
        would add to them. Only a connection idle for a while is pinged first (PostgreSQL
        may have restarted meanwhile); one left in any state but idle is closed, not kept."""
        pg: psycopg.AsyncConnection[Any] | None = None
        if self._connections:
            pg, idle_since = self._connections.pop()
            if time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
                try:
                    await pg.execute("SELECT 1")
                except psycopg.Error:
                    await pg.close()
                    pg = None
        if pg is None:
            pg = await psycopg.AsyncConnection.connect(
                self._database_url,
                autocommit=True,  # transactions are explicit (pg.transaction())
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name="energymesh-telemetry-ingest",
            )
        try:
            yield pg
        finally:
            if pg.broken or pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await pg.close()
            elif not pg.closed:
                self._connections.append((pg, time.monotonic()))

    async def close(self) -> None:
        while self._connections:
            await self._connections.pop()[0].close()

    def submit(self, batch: PendingBatch) -> asyncio.Future[telemetry_pb2.BatchResult]:
        """Queues a batch; its future resolves with its result after COMMIT (or fails)."""
        self._buffer.add(batch.stream, batch.nbytes)
        self._queue.append(batch)
        self._queued_readings += len(batch.times)
        if not self._in_flight or self._queued_readings >= PARALLEL_MIN_READINGS:
            self._wakeup.set()
        return batch.future

    async def run(self) -> None:
        """Two committers: while one waits on PostgreSQL the other prepares its group, so
        neither the database nor this process idles. Acks stay in order per stream (streams
        await their batches' results in order)."""
        await asyncio.gather(*(self._committer() for _ in range(COMMITTERS)))

    async def _committer(self) -> None:
        while True:
            while not self._queue or (
                self._in_flight and self._queued_readings < PARALLEL_MIN_READINGS
            ):
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queued_readings < PARALLEL_MIN_READINGS:
                pause = self._last_start + SMALL_GROUP_INTERVAL_SECONDS - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if not self._queue or self._in_flight:
                    continue  # the other committer took the group meanwhile
            self._last_start = time.monotonic()
            group = self._take_group()
            self._in_flight += 1
            try:
                await self._commit_with_retry(group)
            finally:
                self._in_flight -= 1
                self._buffer.release(group)
                if self._queue:
                    self._wakeup.set()

    def _take_group(self) -> list[PendingBatch]:
        group = [self._queue.popleft()]
        readings = len(group[0].times)
        while self._queue and readings + len(self._queue[0].times) <= self._max_group:
            batch = self._queue.popleft()
            readings += len(batch.times)
            group.append(batch)
        self._queued_readings -= readings
        return group

    async def _commit_with_retry(self, group: list[PendingBatch]) -> None:
        error: BaseException
        for attempt in range(5):
            try:
                results = await self._commit(group)
            except (RetryGroup, psycopg.errors.UniqueViolation) as race:
                log.info("ingest: concurrent writer, retrying the group (%s)", race)
                error = race
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            except DATABASE_ERRORS as exc:
                log.warning(
                    "ingest: database unavailable, failing %d batches (%s)", len(group), exc
                )
                error = Unavailable("the database is unavailable; resend unacknowledged batches")
                break
            except Exception as exc:
                log.exception("ingest: commit failed")
                error = exc
                break
            for batch, result in zip(group, results, strict=True):
                if not batch.future.done():
                    batch.future.set_result(result)
            return
        else:
            error = Unavailable("could not commit after repeated write conflicts; resend")
        for batch in group:
            if not batch.future.done():
                batch.future.set_exception(error)
                # Retrieved by the stream, or nobody (the client went away): don't warn.
                batch.future.exception()

    async def _commit(self, group: Sequence[PendingBatch]) -> list[telemetry_pb2.BatchResult]:
        if time.monotonic() >= self._staging_until:
            try:
                return await self._commit_once(group, direct=True)
            except StoredBefore:
                self._staging_until = time.monotonic() + DIRECT_BACKOFF_SECONDS
        return await self._commit_once(group, direct=False)

    async def _commit_once(
        self, group: Sequence[PendingBatch], *, direct: bool
    ) -> list[telemetry_pb2.BatchResult]:
        """One transaction for the group. `direct`: COPY new readings straight into readings
        (raises StoredBefore, the transaction rolled back, if one of them is stored already);
        otherwise through the staging table, which sorts new readings from stored ones."""
        now = datetime.now(UTC)
        results: list[telemetry_pb2.BatchResult | None] = [None] * len(group)
        events = 0
        followers: dict[int, int] = {}
        leaders: dict[tuple[str, str], int] = {}
        for position, batch in enumerate(group):
            if batch.batch_id:
                key = (batch.meter_id, batch.batch_id)
                if key in leaders:
                    followers[position] = leaders[key]
                else:
                    leaders[key] = position
        times = np.concatenate([b.times for b in group])
        await self._partitions.ensure_for(times[np.concatenate([b.reasons for b in group]) == 0])
        async with self._connection() as pg, pg.transaction(), pg.cursor() as cursor:
            if leaders:
                await cursor.execute(
                    BATCHES_DONE,
                    ([key[0] for key in leaders], [key[1] for key in leaders]),
                )
                done: list[Any] = await cursor.fetchall()
                for meter_id, batch_id, stored_result in done:
                    position = leaders[(str(meter_id), str(batch_id))]
                    result = telemetry_pb2.BatchResult.FromString(bytes(stored_result))
                    result.batch_index = group[position].index
                    result.replayed = True
                    results[position] = result
            writing = [
                position
                for position in range(len(group))
                if results[position] is None and position not in followers
            ]
            if writing:
                fresh, accepted_times, accepted_owner = await self._write(
                    cursor, [group[p] for p in writing], now, direct
                )
                for position, result in zip(writing, fresh, strict=True):
                    results[position] = result
                await self._record_batches(cursor, group, writing, results, now)
                events = await self._emit_events(
                    cursor, group, writing, accepted_times, accepted_owner
                )
        if events:
            self._outbox.wake()
        for position, leader in followers.items():
            copy = telemetry_pb2.BatchResult()
            copy.CopyFrom(results[leader])  # type: ignore[arg-type]
            copy.batch_index = group[position].index
            copy.replayed = True
            results[position] = copy
        final = [result for result in results if result is not None]
        assert len(final) == len(group)
        self.stats.commits += 1
        self.stats.committed_batches += len(group)
        self.stats.committed_readings += sum(r.accepted for r in final if not r.replayed)
        return final

    async def _write(
        self,
        cursor: psycopg.AsyncCursor[Any],
        batches: Sequence[PendingBatch],
        now: datetime,
        direct: bool,
    ) -> tuple[list[telemetry_pb2.BatchResult], Int64s, npt.NDArray[np.int32]]:
        """Stores the batches' valid readings; their results, and the time and batch (position
        in `batches`) of every reading stored."""
        count = len(batches)
        lengths = np.fromiter((len(b.times) for b in batches), np.int64, count)
        all_times = np.concatenate([b.times for b in batches])
        all_values = np.concatenate([b.values for b in batches])
        all_reasons = np.concatenate([b.reasons for b in batches])
        all_owner = np.repeat(np.arange(count, dtype=np.int32), lengths)
        valid = all_reasons == 0
        times, values, owner = all_times[valid], all_values[valid], all_owner[valid]
        total = len(times)
        meter_ids = sorted({b.meter_id for b in batches})
        meter_code = {meter_id: code for code, meter_id in enumerate(meter_ids)}
        batch_meter = np.array([meter_code[b.meter_id] for b in batches], dtype=np.int32)
        meters = batch_meter[owner] if total else np.empty(0, dtype=np.int32)

        repeated, leader = repeats(meters, times, owner, len(meter_ids) == count)
        staged = np.flatnonzero(~repeated)

        uuids = np.frombuffer(
            b"".join(uuid.UUID(meter_id).bytes for meter_id in meter_ids), dtype="V16"
        )
        existed, stored_value = await self._store(
            cursor, uuids[meters[staged]], times[staged], values[staged], staged, total, direct
        )
        # What is stored for each key now: the older value, or what its leader just wrote.
        effective = np.where(existed, stored_value, values)
        reference = effective[leader]
        accepted = ~repeated & ~existed
        same = values == reference
        duplicate = ~accepted & same
        conflict = ~accepted & ~same

        outcome = _Outcome(
            accepted=np.bincount(owner[accepted], minlength=count).astype(np.int64),
            duplicates=np.bincount(owner[duplicate], minlength=count).astype(np.int64),
        )
        rejected_rows: list[tuple[object, ...]] = []
        for j in np.flatnonzero(all_reasons).tolist():
            batch = batches[int(all_owner[j])]
            rejected_rows.append(
                (
                    batch.meter_id,
                    batch.organization_id,
                    batch.batch_id,
                    int(all_times[j]),
                    float(all_values[j]),
                    int(all_reasons[j]),
                    None,
                    now,
                )
            )
        for j in np.flatnonzero(conflict).tolist():
            batch = batches[int(owner[j])]
            rejected_rows.append(
                (
                    batch.meter_id,
                    batch.organization_id,
                    batch.batch_id,
                    int(times[j]),
                    float(values[j]),
                    CONFLICT,
                    float(reference[j]),
                    now,
                )
            )
        if rejected_rows:
            async with cursor.copy(
                "COPY telemetry.rejected_readings (meter_id, organization_id, batch_id, "
                "time_unix_ms, value, reason, stored_value, receive_time) FROM STDIN"
            ) as copy:
                await copy.write("".join(copy_text_line(row) for row in rejected_rows))
        width = max(REASONS) + 1
        by_reason = np.bincount(
            all_owner.astype(np.int64) * width + all_reasons, minlength=count * width
        ).reshape(count, width)
        by_reason[:, CONFLICT] += np.bincount(owner[conflict], minlength=count)
        accepted_counts = outcome.accepted.tolist()
        duplicate_counts = outcome.duplicates.tolist()
        has_rejected = [bool(n) for n in np.count_nonzero(by_reason, axis=1).tolist()]
        commit_time = timestamp_pb2.Timestamp(seconds=int(now.timestamp()))
        status = ok_status()
        results: list[telemetry_pb2.BatchResult] = []
        for i, batch in enumerate(batches):
            result = telemetry_pb2.BatchResult(
                batch_id=batch.batch_id,
                meter_id=batch.meter_id,
                batch_index=batch.index,
                accepted=accepted_counts[i],
                duplicates=duplicate_counts[i],
                status=status,
                commit_time=commit_time,
            )
            if has_rejected[i]:
                counts_of: list[int] = [int(n) for n in by_reason[i]]
                result.rejected.extend(
                    telemetry_pb2.RejectedCount(reason=reason, count=counts_of[reason])
                    for reason in REASONS
                    if counts_of[reason]
                )
            results.append(result)
        return results, times[accepted], owner[accepted]

    async def _store(
        self,
        cursor: psycopg.AsyncCursor[Any],
        meters: npt.NDArray[np.void],
        times: Int64s,
        values: Floats,
        seqs: Int64s,
        total: int,
        direct: bool,
    ) -> tuple[npt.NDArray[np.bool_], Floats]:
        """Stores the group's unique readings. Returns, per reading of the group, whether its
        (meter, time) was stored before and the value stored then."""
        existed = np.zeros(total, dtype=bool)
        stored_value = np.full(total, np.nan)
        if not len(seqs):
            return existed, stored_value
        if direct:
            # Fast path for new data: COPY straight into readings. A key stored before makes
            # the COPY fail (unique violation), and the group is written again through the
            # staging table, which sorts duplicates from conflicts.
            rows = np.zeros(len(seqs), dtype=READING_ROW)
            rows["fields"] = 3
            rows["meter_len"] = 16
            rows["time_len"] = 8
            rows["value_len"] = 8
            rows["meter"] = meters
            rows["time"] = (times - PG_EPOCH_MS) * 1000
            rows["value"] = values
            try:
                async with cursor.copy(COPY_READINGS) as copy:
                    await write_binary_copy(copy, rows)
            except psycopg.errors.UniqueViolation:
                raise StoredBefore from None
            return existed, stored_value
        await cursor.execute(CREATE_STAGING)
        rows = np.zeros(len(seqs), dtype=STAGING_ROW)
        rows["fields"] = 4
        rows["meter_len"] = 16
        rows["time_len"] = 8
        rows["value_len"] = 8
        rows["seq_len"] = 4
        rows["meter"] = meters
        rows["time"] = (times - PG_EPOCH_MS) * 1000
        rows["value"] = values
        rows["seq"] = seqs
        async with cursor.copy(COPY_STAGING) as copy:
            await write_binary_copy(copy, rows)
        await cursor.execute(INSERT_STAGED)
        inserted_row = await cursor.fetchone()
        inserted = int(inserted_row[0]) if inserted_row else 0
        if inserted < len(seqs):
            # Binary COPY, decoded with numpy: a replayed group is up to max_group_readings
            # rows, which as Python tuples would cost far more memory and time.
            chunks: list[bytes] = []
            async with cursor.copy(COPY_STORED_BEFORE) as copy:
                async for chunk in copy:
                    chunks.append(bytes(chunk))
            found = stored_before_rows(b"".join(chunks))
            if inserted + len(found) != len(seqs):
                # Another transaction inserted some keys while we waited on them.
                raise RetryGroup(f"{len(seqs) - inserted - len(found)} keys in flux")
            if len(found):
                positions = found["seq"].astype(np.int64)
                existed[positions] = True
                stored_value[positions] = found["value"].astype(np.float64)
        return existed, stored_value

    async def _record_batches(
        self,
        cursor: psycopg.AsyncCursor[Any],
        group: Sequence[PendingBatch],
        writing: Sequence[int],
        results: Sequence[telemetry_pb2.BatchResult | None],
        now: datetime,
    ) -> None:
        rows = [
            (
                group[p].meter_id,
                group[p].batch_id,
                group[p].organization_id,
                results[p].SerializeToString(),  # type: ignore[union-attr]
                now,
            )
            for p in writing
            if group[p].batch_id
        ]
        if rows:
            # COPY (a statement per row costs PostgreSQL more than the readings' share). A
            # batch id committed meanwhile by another replica is a UniqueViolation, and the
            # whole group is retried (it then replays that batch).
            async with cursor.copy(COPY_BATCHES) as copy:
                for row in rows:
                    await copy.write_row(row)

    async def _emit_events(
        self,
        cursor: psycopg.AsyncCursor[Any],
        group: Sequence[PendingBatch],
        writing: Sequence[int],
        accepted_times: Int64s,
        accepted_owner: npt.NDArray[np.int32],
    ) -> int:
        """One telemetry.readings.committed per meter that got new readings, all queued in
        the outbox (the kernel's Outbox.add, for many events) with one COPY; how many."""
        if not len(accepted_times):
            return 0
        # accepted_owner is ascending (readings are concatenated batch by batch): reduce per
        # batch with numpy, then merge the batches of each meter.
        starts = np.flatnonzero(np.r_[True, accepted_owner[1:] != accepted_owner[:-1]])
        owners = accepted_owner[starts].tolist()
        firsts = np.minimum.reduceat(accepted_times, starts).tolist()
        lasts = np.maximum.reduceat(accepted_times, starts).tolist()
        counts = np.diff(np.r_[starts, len(accepted_times)]).tolist()
        per_meter: dict[str, list[Any]] = {}
        for owner, first, last, count in zip(owners, firsts, lasts, counts, strict=True):
            batch = group[writing[owner]]
            entry = per_meter.get(batch.meter_id)
            if entry is None:
                per_meter[batch.meter_id] = [batch.organization_id, first, last, count, [batch]]
            else:
                entry[1] = min(entry[1], first)
                entry[2] = max(entry[2], last)
                entry[3] += count
                entry[4].append(batch)
        async with cursor.copy(COPY_OUTBOX) as copy:
            for meter_id, (organization_id, first, last, count, batches) in per_meter.items():
                payload = readings_committed_json(
                    organization_id,
                    meter_id,
                    first,
                    last,
                    count,
                    [b.batch_id for b in batches if b.batch_id],
                )
                message_id = str(uuid.uuid4())
                headers = event_headers(READINGS_COMMITTED_TYPE, message_id)
                await copy.write_row((message_id, READINGS_COMMITTED, payload, Jsonb(headers)))
        return len(per_meter)


STORED_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("seq_len", ">i4"),
        ("seq", ">i4"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
COPY_HEADER_BYTES = len(COPY_HEADER)


def stored_before_rows(data: bytes) -> npt.NDArray[np.void]:
    """The rows of `COPY (STORED_BEFORE) TO STDOUT (FORMAT BINARY)`: (seq int4, value
    float8), neither ever NULL."""
    if not data:
        return np.empty(0, dtype=STORED_ROW)
    if not data.startswith(COPY_HEADER[:11]):
        raise ValueError("not PostgreSQL binary COPY data")
    extension = int.from_bytes(data[15:19], "big")
    body = data[COPY_HEADER_BYTES + extension : len(data) - len(COPY_TRAILER)]
    if data[len(data) - len(COPY_TRAILER) :] != COPY_TRAILER or len(body) % STORED_ROW.itemsize:
        raise ValueError("unexpected binary COPY layout")
    return np.frombuffer(body, dtype=STORED_ROW)


async def write_binary_copy(copy: psycopg.AsyncCopy, rows: npt.NDArray[np.void]) -> None:
    """Sends rows (a READING_ROW / STAGING_ROW array) as binary COPY data in slices of the
    array itself: no bytes copy of the whole group is made (psycopg queues what it is given)."""
    await copy.write(COPY_HEADER)
    data = rows.view(np.uint8).data
    for offset in range(0, len(data), COPY_CHUNK_BYTES):
        await copy.write(data[offset : offset + COPY_CHUNK_BYTES])
    await copy.write(COPY_TRAILER)


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, float):
        return (
            repr(value)
            if np.isfinite(value)
            else {"nan": "NaN", "inf": "Infinity"}.get(str(value), "-Infinity")
        )
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_text_line(row: Sequence[object]) -> str:
    """One row in COPY's text format."""
    return "\t".join(_copy_text(value) for value in row) + "\n"


def refused_result(
    index: int, batch_id: str, meter_id: str, error: DomainError
) -> telemetry_pb2.BatchResult:
    """The result of a batch refused whole (nothing of it written)."""
    return telemetry_pb2.BatchResult(
        batch_id=batch_id,
        meter_id=meter_id,
        batch_index=index,
        status=status_pb2.Status(
            code=error.code.value[0], message=error.message, details=error.details()
        ),
    )
