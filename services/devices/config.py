"""The devices service's configuration: the kernel's plus its own, read once at startup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from services.kernel.config import Env, KernelConfig, kernel_fields


@dataclass(frozen=True)
class DevicesConfig(KernelConfig):
    # Largest CSV document ImportMeters accepts, and most data rows.
    import_max_bytes: int
    import_max_rows: int
    # Longest the connectivity monitor sleeps between passes; it wakes earlier when a meter
    # is due to go offline or a reading arrived.
    connectivity_max_sleep_seconds: float

    @classmethod
    def from_env(cls, service_name: str = "devices", env: Env | None = None) -> Self:
        env = env or Env()
        return cls(
            **kernel_fields(service_name, env),
            import_max_bytes=env.integer("DEVICES_IMPORT_MAX_BYTES", 2 * 1024 * 1024),
            import_max_rows=env.integer("DEVICES_IMPORT_MAX_ROWS", 10_000),
            connectivity_max_sleep_seconds=env.number(
                "DEVICES_CONNECTIVITY_MAX_SLEEP_SECONDS", 30.0
            ),
        )
