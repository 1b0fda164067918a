"""The auth service's tables, all in the `auth` schema."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, MetaData, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kernel.outbox import outbox_table

SCHEMA = "auth"


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Timestamped:
    create_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Organization(Timestamped, Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))


class User(Timestamped, Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    # Lower-cased email: the unique sign-in key.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    # Null for an invited user who has not chosen a password yet.
    password_hash: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # Access tokens issued before this instant are refused (password reset, role change ...).
    # Set from the service's clock, the clock that stamps the tokens' iat.
    tokens_valid_after: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    update_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class RefreshToken(Timestamped, Base):
    """One link in a session's rotation chain. All links of one login share a family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when exchanged for a new pair; presenting it again is a reuse.
    use_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OneTimeToken(Timestamped, Base):
    """Password-reset and email-verification tokens, stored hashed."""

    __tablename__ = "one_time_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    use_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SigningKey(Timestamped, Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # PKCS#8 PEM, encrypted with AUTH_KEY_ENCRYPTION_SECRET.
    private_key_pem: Mapped[bytes]
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # When it stopped signing; it stays in the JWKS until its last token expires.
    retire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("login_attempts_by_account", "email_key", "attempt_time"),
        Index("login_attempts_by_address", "client_address", "attempt_time"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email_key: Mapped[str] = mapped_column(String(320))
    client_address: Mapped[str] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    attempt_time: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("audit_events_by_org_time", "organization_id", "event_time", "event_id"),
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    actor_user_id: Mapped[str] = mapped_column(String(36), default="")
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(200), default="")
    service: Mapped[str] = mapped_column(String(50))
    client_address: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
