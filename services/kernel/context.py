"""Per-call context: who is calling and under which trace, visible to handlers and logs."""

from __future__ import annotations

import contextvars
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Roles within one organization, strongest first."""

    ADMIN = "admin"
    MANAGER = "manager"
    OPERATOR = "operator"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Caller:
    """The authenticated user of the current call, taken from a verified access token."""

    user_id: str
    organization_id: str
    role: Role
    token_id: str
    # Seconds since the epoch, with millisecond precision (JWT NumericDate may be fractional).
    issued_at: float


@dataclass(frozen=True)
class Trace:
    """W3C trace context of the current call (https://www.w3.org/TR/trace-context/)."""

    trace_id: str
    span_id: str

    @classmethod
    def new(cls) -> Trace:
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @classmethod
    def from_traceparent(cls, header: str | None) -> Trace:
        """Continues the caller's trace with a new span, or starts one if the header is bad."""
        parts = (header or "").split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            try:
                int(parts[1], 16)
            except ValueError:
                return cls.new()
            if parts[1] != "0" * 32:
                return cls(parts[1], secrets.token_hex(8))
        return cls.new()

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "current_caller", default=None
)
current_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "current_trace", default=None
)
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("current_method", default="")
current_client_address: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_client_address", default=""
)
