"""The analytics service's tables, all in the `analytics` schema.

rollups holds one row per meter, granularity (QUARTER_HOUR, HOUR, DAY, MONTH) and bucket, the
buckets counted in the site's time zone (services/analytics/rollups.py). site_rollups holds
their sums per site, commodity, direction and unit (services/analytics/aggregates.py).
anomalies holds the anomalous hours found in them. meters and sites are the local copy of
what the rollups need from the device registry (its devices.* events). tariffs,
tariff_assignments and emission_factors price the rollups (services/analytics/pricing.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
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
    )

    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    organization_id: Mapped[str] = mapped_column(String(36))
    # rollups.Granularity value: QUARTER_HOUR, HOUR, DAY or MONTH.
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
    # Priced per quarter hour (hours and days: the sums); None without a tariff or factor.
    cost: Mapped[float | None] = mapped_column(Float(precision=53))
    co2_kg: Mapped[float | None] = mapped_column(Float(precision=53))
    currency: Mapped[str | None] = mapped_column(String(3))


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
    # Set while the meter's rollups are rebuilt (services/analytics/rebuild.py): its readings
    # before this instant are done; None when no rebuild is pending.
    rebuilt_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SiteInfo(Base):
    """A site's time zone (from devices.site.* events)."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    time_zone: Mapped[str] = mapped_column(String(64))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SiteRollup(Base):
    """The sum of a site's meter rollups of one commodity, direction and unit in one bucket.

    Kept equal to the sum of the meters' rows by adding each change of a meter row to it
    (services/analytics/aggregates.py). Additive columns only, plus the coincident peak: the
    highest 15-minute total of the bucket's quarter hours."""

    __tablename__ = "site_rollups"
    __table_args__ = (
        # Queries read one granularity of a site over a range: that leads the key.
        PrimaryKeyConstraint(
            "site_id",
            "granularity",
            "bucket_start",
            "commodity",
            "direction",
            "unit",
            name="site_rollups_pkey",
        ),
    )

    site_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    organization_id: Mapped[str] = mapped_column(String(36))
    # devices.v1.Commodity / FlowDirection numbers.
    commodity: Mapped[int] = mapped_column(SmallInteger)
    direction: Mapped[int] = mapped_column(SmallInteger)
    unit: Mapped[str] = mapped_column(String(8))
    granularity: Mapped[str] = mapped_column(String(16))
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    bucket_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[float] = mapped_column(Float(precision=53))
    # Time covered by the meters' readings, and the meters' expected time (bucket length per
    # meter row): completeness = covered_ms / span_ms.
    covered_ms: Mapped[int] = mapped_column(BigInteger)
    span_ms: Mapped[int] = mapped_column(BigInteger)
    reading_count: Mapped[int] = mapped_column(BigInteger)
    reset_count: Mapped[int] = mapped_column(Integer)
    rollover_count: Mapped[int] = mapped_column(Integer)
    # Sums of the priced meter rows, and how many meter rows were priced (0: no cost).
    cost: Mapped[float] = mapped_column(Float(precision=53))
    priced_rows: Mapped[int] = mapped_column(Integer)
    co2_kg: Mapped[float] = mapped_column(Float(precision=53))
    co2_rows: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str | None] = mapped_column(String(3))
    # Coincident peak: the highest quarter-hour total as a rate (kW or m3/h), and that quarter.
    peak_demand: Mapped[float] = mapped_column(Float(precision=53))
    peak_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AnomalyRow(Base):
    """An hour of a meter whose consumption was outside its hour-of-week baseline."""

    __tablename__ = "anomalies"
    __table_args__ = (
        UniqueConstraint("meter_id", "start_time", name="anomalies_one_per_hour"),
        Index("anomalies_by_organization", "organization_id", "start_time", "id"),
        Index("anomalies_by_site", "site_id", "start_time", "id"),
    )

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    meter_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    site_id: Mapped[str] = mapped_column(String(36))
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[float] = mapped_column(Float(precision=53))
    expected: Mapped[float] = mapped_column(Float(precision=53))
    score: Mapped[float] = mapped_column(Float(precision=53))
    unit: Mapped[str] = mapped_column(String(8))
    detect_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Tariff(Base):
    """A tariff and its versions (proto3 JSON of energymesh.analytics.v1.TariffVersion each,
    ordered by effective_from)."""

    __tablename__ = "tariffs"
    __table_args__ = (Index("tariffs_by_name", "organization_id", "name", "id"),)

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(200))
    currency_code: Mapped[str] = mapped_column(String(3))
    versions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # Incremented by every update (the etag).
    version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TariffAssignment(Base):
    """The tariff pricing a site's meters of one commodity and direction."""

    __tablename__ = "tariff_assignments"
    __table_args__ = (
        UniqueConstraint(
            "site_id", "commodity", "direction", name="tariff_assignments_one_per_meter_kind"
        ),
        Index("tariff_assignments_by_tariff", "tariff_id"),
    )

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    site_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    tariff_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("tariffs.id", ondelete="CASCADE")
    )
    # devices.v1.Commodity / FlowDirection numbers (direction IMPORT or EXPORT).
    commodity: Mapped[int] = mapped_column(SmallInteger)
    direction: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EmissionFactor(Base):
    """kg CO2e per canonical unit of a commodity over [effective_from, effective_to)."""

    __tablename__ = "emission_factors"
    __table_args__ = (
        Index(
            "emission_factors_by_commodity",
            "organization_id",
            "commodity",
            "effective_from",
            "id",
        ),
    )

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(36))
    commodity: Mapped[int] = mapped_column(SmallInteger)
    kg_per_unit: Mapped[float] = mapped_column(Float(precision=53))
    effective_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    effective_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
