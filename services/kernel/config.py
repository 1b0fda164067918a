"""Configuration, read once from the environment into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

# Secrets that development mode may default; production mode refuses to start without them.
DEV_SECRET_DEFAULTS: Mapping[str, str] = {
    "AUTH_KEY_ENCRYPTION_SECRET": "dev-only-insecure-key-encryption-secret",
}


class ConfigError(ValueError):
    """The environment does not describe a runnable service."""


@dataclass(frozen=True)
class Env:
    """A read-only view of the environment with typed getters and clear errors."""

    values: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def production(self) -> bool:
        return self.text("ENERGYMESH_ENV", "development") == "production"

    def text(self, name: str, default: str | None = None) -> str:
        value = self.values.get(name, default)
        if value is None or value == "":
            raise ConfigError(f"{name} must be set")
        return value

    def integer(self, name: str, default: int) -> int:
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc

    def number(self, name: str, default: float) -> float:
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from exc

    def secret(self, name: str) -> str:
        """A secret: required in production, a loud development default otherwise."""
        value = self.values.get(name)
        if value:
            return value
        if self.production or name not in DEV_SECRET_DEFAULTS:
            raise ConfigError(f"{name} must be set (no default in production mode)")
        return DEV_SECRET_DEFAULTS[name]


@dataclass(frozen=True)
class KernelConfig:
    """What every service reads. Services extend it with their own frozen dataclass."""

    service_name: str
    production: bool
    listen_address: str
    database_url: str
    nats_url: str
    auth_address: str
    jwt_issuer: str
    jwt_audience: str
    log_level: str
    shutdown_grace_seconds: float
    max_message_bytes: int
    health_check_interval_seconds: float
    trusted_proxy_hops: int

    @classmethod
    def from_env(cls, service_name: str, env: Env | None = None) -> Self:
        env = env or Env()
        return cls(**kernel_fields(service_name, env))


def kernel_fields(service_name: str, env: Env) -> dict[str, Any]:
    """The kernel's fields, for services whose config subclasses KernelConfig."""
    return {
        "service_name": service_name,
        "production": env.production,
        "listen_address": env.text("GRPC_LISTEN_ADDRESS", "127.0.0.1:0"),
        "database_url": env.text("DATABASE_URL"),
        "nats_url": env.text("NATS_URL"),
        "auth_address": env.text("AUTH_GRPC_ADDRESS", "127.0.0.1:50051"),
        "jwt_issuer": env.text("JWT_ISSUER", "energymesh"),
        "jwt_audience": env.text("JWT_AUDIENCE", "energymesh"),
        "log_level": env.text("LOG_LEVEL", "INFO").upper(),
        "shutdown_grace_seconds": env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
        "max_message_bytes": env.integer("GRPC_MAX_MESSAGE_BYTES", 4 * 1024 * 1024),
        "health_check_interval_seconds": env.number("HEALTH_CHECK_INTERVAL_SECONDS", 1.0),
        "trusted_proxy_hops": env.integer("TRUSTED_PROXY_HOPS", 0),
    }
