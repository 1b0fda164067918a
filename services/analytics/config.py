"""The analytics service's configuration: the kernel's plus its own, read once at startup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from services.kernel.config import Env, KernelConfig, kernel_fields


@dataclass(frozen=True)
class AnalyticsConfig(KernelConfig):
    # Where the device registry answers (GetMeter on the caller's behalf).
    devices_address: str
    # How long a GetMeter answer is reused per user and meter.
    meter_cache_seconds: float

    @classmethod
    def from_env(cls, service_name: str = "analytics", env: Env | None = None) -> Self:
        env = env or Env()
        return cls(
            **kernel_fields(service_name, env),
            devices_address=env.text("DEVICES_GRPC_ADDRESS", "127.0.0.1:50052"),
            meter_cache_seconds=env.number("ANALYTICS_METER_CACHE_SECONDS", 10.0),
        )
