"""The devices service's tables, all in the `devices` schema.

Enumerations are stored as short lower-case words ("electricity", "active"); see domain.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, MetaData, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kernel.outbox import outbox_table

SCHEMA = "devices"


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (Index("sites_by_org", "organization_id", "create_time", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(200))
    # IANA name, e.g. Europe/Berlin.
    time_zone: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(500), default="")
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    # Bumped on every change; the etag is derived from it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Deleted sites are kept (decommissioned meters still name them) but hidden.
    delete_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Meter(Base):
    __tablename__ = "meters"
    __table_args__ = (
        Index("meters_by_org", "organization_id", "create_time", "id"),
        Index("meters_by_site", "site_id"),
        # A serial number identifies one meter in service per organization; a decommissioned
        # meter frees it for its replacement.
        Index(
            "meters_serial_in_service",
            "organization_id",
            "serial_number",
            unique=True,
            postgresql_where=text("state <> 'decommissioned'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(String(36))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    serial_number: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    commodity: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(16))
    register_type: Mapped[str] = mapped_column(String(16))
    multiplier: Mapped[float] = mapped_column(Float, default=1.0)
    rollover_value: Mapped[float | None] = mapped_column(Float)
    expected_interval_seconds: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    # Newest reading telemetry committed (from telemetry.readings.committed).
    last_seen_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The connectivity last announced on devices.meter.connectivity_changed, so that each
    # transition is published once; what clients see is computed when read.
    announced_connectivity: Mapped[str] = mapped_column(String(16), default="offline")
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MeterToken(Base):
    """A meter's own credential, stored as a SHA-256 hash and found by its public prefix."""

    __tablename__ = "meter_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(String(36))
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IngestKey(Base):
    """An organization's credential for head-end systems, optionally limited to one site."""

    __tablename__ = "ingest_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    organization_id: Mapped[str] = mapped_column(String(36), index=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"))
    display_name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MeterAssignee(Base):
    """A user who may see a meter (what narrows a viewer's view)."""

    __tablename__ = "meter_assignees"
    __table_args__ = (Index("meter_assignees_by_user", "organization_id", "user_id"),)

    meter_id: Mapped[str] = mapped_column(
        ForeignKey("meters.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
