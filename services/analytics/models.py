"""The analytics service's tables, all in the `analytics` schema.

rollups holds one row per meter, granularity (QUARTER_HOUR, HOUR, DAY) and bucket, the
buckets counted in the site's time zone (services/analytics/rollups.py). meters and sites are
the local copy of what the rollups need from the device registry (its devices.* events).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kernel.outbox import outbox_table

SCHEMA = "analytics"

# Rollup.flags bits.
FLAG_RESET = 1
FLAG_ROLLOVER = 2


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Rollup(Base):
    """Consumption of one meter in one bucket [bucket_start, bucket_end)."""

    __tablename__ = "rollups"
    __table_args__ = (
        PrimaryKeyConstraint("meter_id", "granularity", "bucket_start", name="rollups_pkey"),
        Index("rollups_by_organization", "organization_id", "granularity", "bucket_start"),
    )

    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    organization_id: Mapped[str] = mapped_column(String(36))
    # rollups.Granularity value: QUARTER_HOUR, HOUR or DAY.
    granularity: Mapped[str] = mapped_column(String(16))
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    bucket_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Amount in `unit` (kWh or m3).
    value: Mapped[float] = mapped_column(Float(precision=53))
    unit: Mapped[str] = mapped_column(String(8))
    completeness: Mapped[float] = mapped_column(Float(precision=53))
    # Time covered by readings, in ms (completeness = covered / bucket length).
    covered_ms: Mapped[int] = mapped_column(BigInteger)
    reading_count: Mapped[int] = mapped_column(Integer)
    reset_count: Mapped[int] = mapped_column(Integer)
    rollover_count: Mapped[int] = mapped_column(Integer)
    peak_demand: Mapped[float] = mapped_column(Float(precision=53))
    peak_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # FLAG_RESET | FLAG_ROLLOVER.
    flags: Mapped[int] = mapped_column(SmallInteger)


class MeterInfo(Base):
    """What the rollups need to know about a meter (from devices.meter.* events)."""

    __tablename__ = "meters"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    site_id: Mapped[str] = mapped_column(String(36))
    # devices.v1.RegisterType / Commodity / FlowDirection numbers.
    register_type: Mapped[int] = mapped_column(SmallInteger)
    commodity: Mapped[int] = mapped_column(SmallInteger)
    direction: Mapped[int] = mapped_column(SmallInteger)
    unit: Mapped[str] = mapped_column(String(16))
    multiplier: Mapped[float] = mapped_column(Float(precision=53))
    rollover_value: Mapped[float | None] = mapped_column(Float(precision=53))
    expected_interval_ms: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SiteInfo(Base):
    """A site's time zone (from devices.site.* events)."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    time_zone: Mapped[str] = mapped_column(String(64))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
