"""A bare gRPC server for the single-reading baseline: it accepts StreamReadings and discards
every message (decoding it, as any server must), then answers with the count.

    python -m benchmarks.bare_server PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from energymesh.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc


class Discard(telemetry_pb2_grpc.TelemetryServiceServicer):
    async def StreamReadings(
        self, request_iterator: AsyncIterator[telemetry_pb2.ReadingBatch], context: Any
    ) -> telemetry_pb2.IngestSummary:
        count = 0
        async for _ in request_iterator:
            count += 1
        return telemetry_pb2.IngestSummary(batches=count)


async def main(port: int) -> None:
    server = grpc.aio.server()
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(Discard(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
