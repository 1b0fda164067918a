"""The telemetry service's tables, all in the `telemetry` schema.

readings is the big one: natively partitioned by RANGE on time (one partition per month,
created ahead by a background task and on demand for backfills, see partitions.py), three
columns and a primary key on (meter_id, time) that makes every reading unique. It is loaded with
COPY through a per-connection staging table (ingest.py), never row by row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kernel.outbox import outbox_table

SCHEMA = "telemetry"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Reading(Base):
    """A stored reading. Partitioned by RANGE (time): see the initial migration."""

    __tablename__ = "readings"
    __table_args__ = (
        PrimaryKeyConstraint("meter_id", "time", name="readings_pkey"),
        {"postgresql_partition_by": "RANGE (time)"},
    )

    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[float] = mapped_column(Float(precision=53))


class Batch(Base):
    """A committed batch id and its result: what makes a resent batch a no-op."""

    __tablename__ = "batches"
    __table_args__ = (
        PrimaryKeyConstraint("meter_id", "batch_id", name="batches_pkey"),
        Index("batches_by_commit_time", "commit_time"),
    )

    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    batch_id: Mapped[str] = mapped_column(String(128))
    organization_id: Mapped[str] = mapped_column(String(36))
    # The serialized energymesh.telemetry.v1.BatchResult answered the first time.
    result: Mapped[bytes] = mapped_column(LargeBinary)
    commit_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RejectedReading(Base):
    """A quarantined reading and why (reason: energymesh.telemetry.v1.RejectReason number)."""

    __tablename__ = "rejected_readings"
    __table_args__ = (Index("rejected_by_meter", "meter_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    organization_id: Mapped[str] = mapped_column(String(36))
    batch_id: Mapped[str] = mapped_column(String(128))
    # As sent: it may lie outside what a timestamptz can hold.
    time_unix_ms: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float(precision=53))
    reason: Mapped[int] = mapped_column(SmallInteger)
    stored_value: Mapped[float | None] = mapped_column(Float(precision=53))
    receive_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MeterInfo(Base):
    """What telemetry knows about a meter from the registry's events (devices.meter.*):
    enough to check a reading's plausibility for its register."""

    __tablename__ = "meters"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    # devices.v1.RegisterType number.
    register_type: Mapped[int] = mapped_column(SmallInteger)
    rollover_value: Mapped[float | None] = mapped_column(Float(precision=53))
    # devices.v1.MeterState number.
    state: Mapped[int] = mapped_column(SmallInteger)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
