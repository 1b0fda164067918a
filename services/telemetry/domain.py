"""The telemetry domain: ingest streams (validation, backpressure, acknowledgements after
commit), CSV imports and the reading queries."""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from nats.aio.msg import Msg

from energymesh.telemetry.v1 import telemetry_pb2
from services.kernel.context import Caller
from services.kernel.database import Database
from services.kernel.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from services.kernel.messaging import PoisonMessage
from services.kernel.pagination import decode_token, encode_token, page_size
from services.telemetry import repository
from services.telemetry.access import Access, UserWriter, WriteCaller
from services.telemetry.config import TelemetryConfig
from services.telemetry.events import (
    CREDENTIAL_REVOKED,
    METER_CREATED,
    METER_DECOMMISSIONED,
    METER_PURGED,
    METER_UPDATED,
)
from services.telemetry.ingest import (
    REASONS,
    SMALL_BATCH,
    GroupCommitWriter,
    IngestBuffer,
    MeterRules,
    PendingBatch,
    StreamBuffer,
    pending_batch,
    refused_result,
)
from services.telemetry.lttb import lttb

log = logging.getLogger(__name__)

MAX_BATCH_ID = 128
MAX_RESULTS = 10_000
MAX_DOWNSAMPLE_SOURCE = 2_000_000
DAY_MS = 86_400_000
# devices.v1.RegisterType / MeterState names as they appear in proto3 JSON events.
REGISTER_TYPES = {
    "REGISTER_TYPE_CUMULATIVE": 1,
    "REGISTER_TYPE_INTERVAL": 2,
    "REGISTER_TYPE_INSTANTANEOUS": 3,
}
METER_STATES = {"METER_STATE_ACTIVE": 1, "METER_STATE_INACTIVE": 2, "METER_STATE_DECOMMISSIONED": 3}


class BatchRefused(Exception):
    """A batch refused whole; the stream tells the client which one."""

    def __init__(self, index: int, batch_id: str, meter_id: str, error: DomainError) -> None:
        super().__init__(error.message)
        self.index = index
        self.batch_id = batch_id
        self.meter_id = meter_id
        self.error = error
        error.metadata = {
            **error.metadata,
            "batch_id": batch_id,
            "batch_index": str(index),
        }
        error.message = f"batch {index} ({batch_id or 'no batch id'}): {error.message}"

    def result(self) -> telemetry_pb2.BatchResult:
        return refused_result(self.index, self.batch_id, self.meter_id, self.error)


@functools.lru_cache(maxsize=65_536)
def is_uuid(value: str) -> bool:
    """Whether `value` is a UUID in its canonical text form (remembered: a stream repeats its
    meter ids message after message)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def column(field: Sequence[float], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A repeated scalar field as a numpy array: numpy reads a long field directly; a field of
    a few values converts faster through a list."""
    return np.array(list(field) if len(field) <= SMALL_BATCH else field, dtype=dtype)


async def all_of(
    futures: Sequence[asyncio.Future[telemetry_pb2.BatchResult]],
) -> list[telemetry_pb2.BatchResult]:
    """The results in order (the first failure raised): asyncio.gather without a callback per
    future, most of which are done already."""
    return [await future for future in futures]


def summarize(results: Sequence[telemetry_pb2.BatchResult]) -> telemetry_pb2.IngestSummary:
    summary = telemetry_pb2.IngestSummary(batches=len(results))
    rejected = dict.fromkeys(REASONS, 0)
    listed = 0
    for result in results:
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        summary.replayed_batches += int(result.replayed)
        for count in result.rejected:
            rejected[count.reason] += count.count
        if result.batch_id or result.rejected or result.status.code:
            if listed < MAX_RESULTS:
                summary.batch_results.append(result)
                listed += 1
            else:
                summary.batch_results_truncated = True
    summary.rejected.extend(
        telemetry_pb2.RejectedCount(reason=reason, count=count)
        for reason, count in rejected.items()
        if count
    )
    return summary


@dataclass(frozen=True)
class _End:
    """Marks the end of a SyncReadings request stream."""


class Telemetry:
    def __init__(
        self,
        database: Database,
        access: Access,
        buffer: IngestBuffer,
        writer: GroupCommitWriter,
        config: TelemetryConfig,
    ) -> None:
        self.database = database
        self.access = access
        self.buffer = buffer
        self.writer = writer
        self.config = config
        self.horizon_ms = config.backfill_horizon_days * DAY_MS

    # --- ingest ---------------------------------------------------------------------------

    def shape_problem(self, batch: telemetry_pb2.ReadingBatch, index: int) -> DomainError | None:
        """Why the batch is refused whole before its meter is looked at (None: it is not)."""
        times, values = batch.time_unix_ms, batch.values
        field = f"batches[{index}]"
        if len(times) != len(values):
            return InvalidArgument(
                [(f"{field}.values", f"has {len(values)} values for {len(times)} times")]
            )
        if len(times) > self.config.max_batch_readings:
            return InvalidArgument(
                [
                    (
                        f"{field}.time_unix_ms",
                        f"has {len(times)} readings; at most "
                        f"{self.config.max_batch_readings} per batch",
                    )
                ]
            )
        size = batch.ByteSize()
        if size > self.config.max_batch_bytes:
            return ResourceExhausted(
                f"the batch is {size} bytes; at most {self.config.max_batch_bytes}"
            )
        if len(batch.batch_id) > MAX_BATCH_ID or not batch.batch_id.isprintable():
            return InvalidArgument(
                [(f"{field}.batch_id", f"must be at most {MAX_BATCH_ID} printable characters")]
            )
        if batch.meter_id and not is_uuid(batch.meter_id):
            return NotFound(f"meter {batch.meter_id!r} not found", metadata={"resource": "meter"})
        return None

    async def prepare(
        self,
        caller: WriteCaller,
        batch: telemetry_pb2.ReadingBatch,
        index: int,
        stream: StreamBuffer | None = None,
    ) -> PendingBatch:
        """Checks a batch's shape and the caller's right to its meter, and classifies each
        reading. Raises BatchRefused for a batch refused whole."""
        times, values = batch.time_unix_ms, batch.values
        problem = self.shape_problem(batch, index)
        if problem is not None:
            raise BatchRefused(index, batch.batch_id, batch.meter_id, problem)
        try:
            meter = await caller.meter(batch.meter_id)
        except Unauthenticated:
            raise
        except DomainError as error:
            raise BatchRefused(index, batch.batch_id, batch.meter_id, error) from None
        pending = pending_batch(
            index,
            batch.batch_id,
            meter.meter_id,
            meter.organization_id,
            column(times, np.int64),
            column(values, np.float64),
            meter.rules,
            self.horizon_ms,
        )
        pending.stream = stream
        return pending

    async def write(
        self, caller: WriteCaller, batches: Sequence[telemetry_pb2.ReadingBatch]
    ) -> telemetry_pb2.IngestSummary:
        """Unary writes (WriteReadings, ImportReadings): every batch must be acceptable."""
        pending = []
        for index, batch in enumerate(batches):
            try:
                pending.append(await self.prepare(caller, batch, index))
            except BatchRefused as refused:
                raise refused.error from None
        futures = [self.writer.submit(batch) for batch in pending]
        return summarize(await asyncio.gather(*futures))

    async def stream(
        self, caller: WriteCaller, requests: AsyncIterator[telemetry_pb2.ReadingBatch]
    ) -> telemetry_pb2.IngestSummary:
        """StreamReadings: read under backpressure, answer once everything is committed."""
        stream = self.buffer.open()
        futures: list[asyncio.Future[telemetry_pb2.BatchResult]] = []
        settled = 0  # futures[:settled] are done and succeeded
        try:
            index = 0
            while True:
                await self.buffer.wait_for_room(stream)
                # Once a batch has failed (the database is down), reading more is pointless.
                # Looked at in order, without a callback per batch: one-reading messages come
                # by the thousand.
                while settled < len(futures) and futures[settled].done():
                    futures[settled].result()
                    settled += 1
                try:
                    batch = await anext(requests)
                except StopAsyncIteration:
                    break
                caller.check_current()
                try:
                    pending = await self.prepare(caller, batch, index, stream)
                except BatchRefused as refused:
                    # The batches before it are committed (or failed) before the call ends.
                    await all_of(futures)
                    raise refused.error from None
                futures.append(self.writer.submit(pending))
                index += 1
            return summarize(await all_of(futures))
        finally:
            self.buffer.close(stream)

    async def sync(
        self, caller: WriteCaller, requests: AsyncIterator[telemetry_pb2.ReadingBatch]
    ) -> AsyncIterator[telemetry_pb2.BatchAck]:
        """SyncReadings: acknowledge each batch, in order, once it is committed."""
        queue: asyncio.Queue[
            asyncio.Future[telemetry_pb2.BatchResult]
            | telemetry_pb2.BatchResult
            | BaseException
            | _End
        ] = asyncio.Queue()
        stream = self.buffer.open()

        async def read() -> None:
            index = 0
            try:
                while True:
                    await self.buffer.wait_for_room(stream)
                    try:
                        batch = await anext(requests)
                    except StopAsyncIteration:
                        break
                    caller.check_current()
                    try:
                        pending = await self.prepare(caller, batch, index, stream)
                    except BatchRefused as refused:
                        await queue.put(refused.result())
                    else:
                        await queue.put(self.writer.submit(pending))
                    index += 1
                await queue.put(_End())
            except Exception as error:
                await queue.put(error)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    break
                if isinstance(item, BaseException):
                    raise item
                result = item if isinstance(item, telemetry_pb2.BatchResult) else await item
                yield telemetry_pb2.BatchAck(result=result)
        finally:
            reader.cancel()
            self.buffer.close(stream)

    # --- CSV import -----------------------------------------------------------------------

    async def import_csv(
        self,
        caller: WriteCaller,
        authorization: str,
        document: bytes,
        meter_id: str,
        import_id: str,
    ) -> telemetry_pb2.IngestSummary:
        if len(document) > self.config.import_max_bytes:
            raise InvalidArgument(
                [("csv", f"is {len(document)} bytes; at most {self.config.import_max_bytes}")]
            )
        try:
            text = document.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidArgument([("csv", "is not UTF-8")]) from None
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise InvalidArgument([("csv", "is empty: the first line must name the columns")])
        header = [name.strip().lower() for name in rows[0]]
        problems: list[tuple[str, str]] = []
        for required in ("time", "value"):
            if required not in header:
                problems.append(("csv", f"has no {required} column"))
        if "meter" not in header and not meter_id:
            problems.append(("csv", "has no meter column and no meter_id was given"))
        if problems:
            raise InvalidArgument(problems)
        data = [row for row in rows[1:] if any(cell.strip() for cell in row)]
        if len(data) > self.config.import_max_rows:
            raise InvalidArgument(
                [("csv", f"has {len(data)} rows; at most {self.config.import_max_rows}")]
            )
        column = {name: header.index(name) for name in ("meter", "time", "value") if name in header}
        per_meter: dict[str, tuple[list[int], list[float]]] = {}
        for number, row in enumerate(data, start=2):
            cells = {name: row[i].strip() if i < len(row) else "" for name, i in column.items()}
            meter = cells.get("meter") or meter_id
            try:
                moment = parse_time(cells["time"])
            except ValueError as error:
                problems.append((f"rows[{number}].time", str(error)))
                continue
            try:
                value = float(cells["value"])
            except ValueError:
                problems.append((f"rows[{number}].value", f"{cells['value']!r} is not a number"))
                continue
            if not meter:
                problems.append((f"rows[{number}].meter", "is empty"))
                continue
            times, values = per_meter.setdefault(meter, ([], []))
            times.append(moment)
            values.append(value)
        if problems:
            raise InvalidArgument(problems[:100])
        import_id = import_id or hashlib.sha256(document).hexdigest()[:32]
        batches: list[telemetry_pb2.ReadingBatch] = []
        for meter, (times, values) in per_meter.items():
            resolved = meter
            if not is_uuid(meter):
                if not isinstance(caller, UserWriter):
                    raise InvalidArgument(
                        [("csv", "serial numbers need a user access token; use meter ids")]
                    )
                resolved = await self.access.meter_id_by_serial(authorization, meter)
            size = self.config.max_batch_readings
            for n, start in enumerate(range(0, len(times), size)):
                batches.append(
                    telemetry_pb2.ReadingBatch(
                        batch_id=f"{import_id}:{resolved}:{n}"[:MAX_BATCH_ID],
                        meter_id=resolved,
                        time_unix_ms=times[start : start + size],
                        values=values[start : start + size],
                    )
                )
        return await self.write(caller, batches)

    # --- reads ----------------------------------------------------------------------------

    async def readable_meter(self, caller: Caller, authorization: str, meter_id: str) -> str:
        if not is_uuid(meter_id):
            raise NotFound(f"meter {meter_id!r} not found", metadata={"resource": "meter"})
        meter = await self.access.visible_meter(caller, authorization, meter_id)
        return str(meter.meter_id)

    async def list_readings(
        self,
        meter_id: str,
        start: datetime | None,
        end: datetime | None,
        requested_size: int,
        token: str,
        max_points: int,
    ) -> telemetry_pb2.ListReadingsResponse:
        filters = {"meter_id": meter_id, "start": str(start), "end": str(end)}
        if max_points:
            if not 3 <= max_points <= 10_000:
                raise InvalidArgument([("max_points", "must be between 3 and 10000")])
            async with self.database.sessions() as session:
                times, values = await repository.readings(
                    session, meter_id, start, end, None, MAX_DOWNSAMPLE_SOURCE + 1
                )
            if len(times) > MAX_DOWNSAMPLE_SOURCE:
                raise InvalidArgument(
                    [("end_time", f"the range holds over {MAX_DOWNSAMPLE_SOURCE} readings")]
                )
            kept = lttb(times.astype(np.float64), values, max_points)
            return telemetry_pb2.ListReadingsResponse(
                readings=[reading(meter_id, int(times[i]), float(values[i])) for i in kept],
                total_readings=len(times),
            )
        size = page_size(requested_size, default=1000, maximum=10_000)
        position = decode_token(token, filters)
        after = None
        if position is not None:
            try:
                after = datetime.fromtimestamp(int(position[0]) / 1000, UTC)
            except (ValueError, TypeError, IndexError, OverflowError):
                raise InvalidArgument([("page_token", "is not a token this API issued")]) from None
        async with self.database.sessions() as session:
            times, values = await repository.readings(
                session, meter_id, start, end, after, size + 1
            )
        more = len(times) > size
        times, values = times[:size], values[:size]
        return telemetry_pb2.ListReadingsResponse(
            readings=[
                reading(meter_id, int(t), float(v))
                for t, v in zip(times.tolist(), values.tolist(), strict=True)
            ],
            next_page_token=encode_token([int(times[-1])], filters) if more else "",
        )

    async def latest_reading(self, meter_id: str) -> telemetry_pb2.Reading:
        async with self.database.sessions() as session:
            found = await repository.latest_reading(session, meter_id)
        if found is None:
            raise NotFound(f"meter {meter_id} has no readings", metadata={"resource": "reading"})
        return reading(meter_id, int(found.time.timestamp() * 1000), found.value)

    async def list_rejected(
        self, meter_id: str, requested_size: int, token: str
    ) -> telemetry_pb2.ListRejectedReadingsResponse:
        size = page_size(requested_size, default=100, maximum=1000)
        filters = {"meter_id": meter_id}
        position = decode_token(token, filters)
        before = None
        if position is not None:
            try:
                before = int(position[0])
            except (ValueError, TypeError, IndexError):
                raise InvalidArgument([("page_token", "is not a token this API issued")]) from None
        async with self.database.sessions() as session:
            rows = await repository.rejected_readings(session, meter_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        response = telemetry_pb2.ListRejectedReadingsResponse(
            next_page_token=encode_token([rows[-1].id], filters) if more else ""
        )
        for row in rows:
            rejected = response.rejected_readings.add(
                meter_id=str(row.meter_id),
                batch_id=row.batch_id,
                time_unix_ms=row.time_unix_ms,
                value=row.value,
                reason=row.reason,
            )
            if row.stored_value is not None:
                rejected.stored_value = row.stored_value
            rejected.receive_time.FromDatetime(row.receive_time)
        return response

    # --- what devices tells us ------------------------------------------------------------

    async def load_meters(self) -> None:
        async with self.database.sessions() as session:
            for info in await repository.meter_infos(session):
                self.access.catalog.put(
                    str(info.id), MeterRules(info.register_type, info.rollover_value)
                )

    async def on_device_event(self, message: Msg) -> None:
        try:
            payload = json.loads(message.data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PoisonMessage(f"not JSON: {error}") from error
        subject = message.subject
        if subject == CREDENTIAL_REVOKED:
            credential_id = str(payload.get("credentialId", ""))
            if credential_id:
                self.access.revoke(credential_id)
            return
        if subject == METER_PURGED:
            meter_id = str(payload.get("meterId", ""))
            if is_uuid(meter_id):
                self.access.catalog.forget(meter_id)
                self.access.meter_changed(meter_id)
                async with self.database.transaction() as session:
                    await repository.purge_meter(session, meter_id)
            return
        if subject in (METER_CREATED, METER_UPDATED, METER_DECOMMISSIONED):
            meter = payload.get("meter") or {}
            meter_id = str(meter.get("meterId", ""))
            if not is_uuid(meter_id):
                return
            rules = MeterRules(
                REGISTER_TYPES.get(str(meter.get("registerType", "")), 0),
                float(meter["rolloverValue"]) if "rolloverValue" in meter else None,
            )
            state = METER_STATES.get(str(meter.get("state", "")), 0)
            known = self.access.catalog.get(meter_id)
            self.access.catalog.put(meter_id, rules)
            self.access.meter_changed(meter_id)
            if known == rules and subject != METER_DECOMMISSIONED:
                return  # replayed at startup, or a change that does not concern readings
            updated = meter.get("updateTime")
            async with self.database.transaction() as session:
                await repository.upsert_meter_info(
                    session,
                    {
                        "id": meter_id,
                        "organization_id": str(meter.get("organizationId", "")),
                        "register_type": rules.register_type,
                        "rollover_value": rules.rollover_value,
                        "state": state,
                        "update_time": datetime.fromisoformat(updated)
                        if isinstance(updated, str)
                        else datetime.now(UTC),
                    },
                )

    async def forget_old_batches(self, retention: timedelta) -> None:
        async with self.database.transaction() as session:
            await repository.forget_batches(session, datetime.now(UTC) - retention)


def parse_time(raw: str) -> int:
    """Milliseconds since the epoch from RFC 3339 with an offset, or from an integer."""
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is neither RFC 3339 nor milliseconds since the epoch") from None
    if moment.tzinfo is None:
        raise ValueError(f"{raw!r} has no UTC offset (local times are ambiguous)")
    return round(moment.timestamp() * 1000)


def reading(meter_id: str, time_ms: int, value: float) -> telemetry_pb2.Reading:
    result = telemetry_pb2.Reading(meter_id=meter_id, time_unix_ms=time_ms, value=value)
    result.time.FromMilliseconds(time_ms)
    return result
