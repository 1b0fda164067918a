"""The telemetry service's configuration: the kernel's plus its own, read once at startup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from services.kernel.config import ConfigError, Env, KernelConfig, kernel_fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class TelemetryConfig(KernelConfig):
    # Where the device registry answers (AuthenticateCredential, GetMeter, ListMeters).
    devices_address: str
    # Largest batch: readings, and bytes as sent (larger batches are refused whole).
    max_batch_readings: int
    max_batch_bytes: int
    # Readings older than this many days are quarantined (TOO_OLD).
    backfill_horizon_days: int
    # Memory the ingest pipeline may hold for received, uncommitted readings: in total and
    # per stream. Streams stop reading (HTTP/2 flow control) while at the limit.
    buffer_limit_bytes: int
    stream_buffer_limit_bytes: int
    # Most readings one group commit (one transaction) writes.
    max_group_readings: int
    # How long an AuthenticateCredential answer or a meter lookup is reused (revocation
    # events evict earlier).
    credential_cache_seconds: float
    # Monthly partitions created ahead of the current month.
    partitions_ahead_months: int
    # Largest CSV document ImportReadings accepts, and most data rows.
    import_max_bytes: int
    import_max_rows: int

    @classmethod
    def from_env(cls, service_name: str = "telemetry", env: Env | None = None) -> Self:
        env = env or Env()
        fields = kernel_fields(service_name, env)
        max_batch_bytes = env.integer("TELEMETRY_MAX_BATCH_BYTES", 4 * MIB)
        # The transport must let a too-large batch through so that the service can say
        # which batch it was; grpcio's own limit would only cut the stream.
        fields["max_message_bytes"] = max(fields["max_message_bytes"], 2 * max_batch_bytes)
        config = cls(
            **fields,
            devices_address=env.text("DEVICES_GRPC_ADDRESS", "127.0.0.1:50052"),
            max_batch_readings=env.integer("TELEMETRY_MAX_BATCH_READINGS", 10_000),
            max_batch_bytes=max_batch_bytes,
            backfill_horizon_days=env.integer("TELEMETRY_BACKFILL_HORIZON_DAYS", 3650),
            buffer_limit_bytes=env.integer("TELEMETRY_BUFFER_LIMIT_BYTES", 32 * MIB),
            stream_buffer_limit_bytes=env.integer("TELEMETRY_STREAM_BUFFER_LIMIT_BYTES", 1 * MIB),
            max_group_readings=env.integer("TELEMETRY_MAX_GROUP_READINGS", 50_000),
            credential_cache_seconds=env.number("TELEMETRY_CREDENTIAL_CACHE_SECONDS", 10.0),
            partitions_ahead_months=env.integer("TELEMETRY_PARTITIONS_AHEAD_MONTHS", 3),
            import_max_bytes=env.integer("TELEMETRY_IMPORT_MAX_BYTES", 4 * MIB),
            import_max_rows=env.integer("TELEMETRY_IMPORT_MAX_ROWS", 100_000),
        )
        if config.buffer_limit_bytes < config.stream_buffer_limit_bytes:
            raise ConfigError("TELEMETRY_BUFFER_LIMIT_BYTES must be at least the per-stream limit")
        return config
