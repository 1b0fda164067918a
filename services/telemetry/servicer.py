"""The gRPC adapter: turns requests into domain calls and domain results into responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from energymesh.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from services.kernel.interceptors import caller
from services.kernel.permissions import Permission
from services.kernel.protos import timestamp_or_none
from services.telemetry.domain import Telemetry

SERVICE = "energymesh.telemetry.v1.TelemetryService"

# Every RPC's access rule. The write RPCs accept meter tokens and ingest keys as well as user
# access tokens, which the interceptor does not know: they are PUBLIC here and authenticate in
# the handler (services/telemetry/access.py), which requires READINGS_WRITE of a user.
ACCESS: dict[str, Permission] = {
    f"/{SERVICE}/{method}": permission
    for method, permission in {
        "StreamReadings": Permission.PUBLIC,
        "SyncReadings": Permission.PUBLIC,
        "WriteReadings": Permission.PUBLIC,
        "ImportReadings": Permission.PUBLIC,
        # Viewers are narrowed to their assigned meters by the registry (GetMeter).
        "ListReadings": Permission.DATA_READ,
        "GetLatestReading": Permission.DATA_READ,
        "ListRejectedReadings": Permission.DATA_READ,
        # Process gauges only, no organization's data.
        "GetIngestStatus": Permission.AUTHENTICATED,
    }.items()
}


def authorization(context: Any) -> str:
    metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
    return metadata.get("authorization", "")


def memory_bytes() -> tuple[int, int]:
    """(resident set size, its peak) of this process, from /proc (0 where unavailable)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, domain: Telemetry) -> None:
        self.domain = domain

    async def StreamReadings(
        self, request_iterator: AsyncIterator[telemetry_pb2.ReadingBatch], context: Any
    ) -> telemetry_pb2.IngestSummary:
        writer = await self.domain.access.writer(authorization(context))
        return await self.domain.stream(writer, aiter(request_iterator))

    async def SyncReadings(
        self, request_iterator: AsyncIterator[telemetry_pb2.ReadingBatch], context: Any
    ) -> AsyncIterator[telemetry_pb2.BatchAck]:
        writer = await self.domain.access.writer(authorization(context))
        async for ack in self.domain.sync(writer, aiter(request_iterator)):
            yield ack

    async def WriteReadings(
        self, request: telemetry_pb2.WriteReadingsRequest, context: Any
    ) -> telemetry_pb2.IngestSummary:
        writer = await self.domain.access.writer(authorization(context))
        return await self.domain.write(writer, [request.batch])

    async def ImportReadings(
        self, request: telemetry_pb2.ImportReadingsRequest, context: Any
    ) -> telemetry_pb2.IngestSummary:
        auth = authorization(context)
        writer = await self.domain.access.writer(auth)
        return await self.domain.import_csv(
            writer, auth, request.csv.data, request.meter_id, request.import_id
        )

    async def ListReadings(
        self, request: telemetry_pb2.ListReadingsRequest, context: Any
    ) -> telemetry_pb2.ListReadingsResponse:
        meter_id = await self.domain.readable_meter(
            caller(), authorization(context), request.meter_id
        )
        return await self.domain.list_readings(
            meter_id,
            timestamp_or_none(request, "start_time"),
            timestamp_or_none(request, "end_time"),
            request.page_size,
            request.page_token,
            request.max_points,
        )

    async def GetLatestReading(
        self, request: telemetry_pb2.GetLatestReadingRequest, context: Any
    ) -> telemetry_pb2.Reading:
        meter_id = await self.domain.readable_meter(
            caller(), authorization(context), request.meter_id
        )
        return await self.domain.latest_reading(meter_id)

    async def ListRejectedReadings(
        self, request: telemetry_pb2.ListRejectedReadingsRequest, context: Any
    ) -> telemetry_pb2.ListRejectedReadingsResponse:
        meter_id = await self.domain.readable_meter(
            caller(), authorization(context), request.meter_id
        )
        return await self.domain.list_rejected(meter_id, request.page_size, request.page_token)

    async def GetIngestStatus(
        self, request: telemetry_pb2.GetIngestStatusRequest, context: Any
    ) -> telemetry_pb2.IngestStatus:
        buffer, stats = self.domain.buffer, self.domain.writer.stats
        rss, peak = memory_bytes()
        return telemetry_pb2.IngestStatus(
            buffered_bytes=buffer.held,
            peak_buffered_bytes=buffer.peak,
            buffer_limit_bytes=buffer.limit,
            stream_buffer_limit_bytes=buffer.stream_limit,
            open_streams=buffer.open_streams,
            waiting_streams=buffer.waiting,
            committed_readings=stats.committed_readings,
            committed_batches=stats.committed_batches,
            commits=stats.commits,
            rss_bytes=rss,
            peak_rss_bytes=peak,
        )
