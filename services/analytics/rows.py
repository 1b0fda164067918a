"""Conversions of stored rows: rollup rows to their dict form (what upserts write and the
site sums add) and to rollups.Bucket (what the calculations work on); anomalies to protos."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from energymesh.analytics.v1 import analytics_pb2
from services.analytics.models import FLAG_RESET, FLAG_ROLLOVER, AnomalyRow, MeterInfo, Rollup
from services.analytics.rollups import Bucket, Granularity
from services.kernel.protos import timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def rollup_row(
    meter: MeterInfo,
    granularity: Granularity,
    bucket: Bucket,
    unit: str,
    currency: str | None = None,
) -> dict[str, Any]:
    """The rollups row of one of a meter's buckets."""
    flags = (FLAG_RESET if bucket.resets else 0) | (FLAG_ROLLOVER if bucket.rollovers else 0)
    return {
        "meter_id": meter.id,
        "organization_id": meter.organization_id,
        "granularity": granularity.value,
        "bucket_start": to_datetime(bucket.start_ms),
        "bucket_end": to_datetime(bucket.end_ms),
        "value": bucket.value,
        "unit": unit,
        "completeness": bucket.completeness,
        "covered_ms": bucket.covered_ms,
        "reading_count": bucket.readings,
        "reset_count": bucket.resets,
        "rollover_count": bucket.rollovers,
        "peak_demand": bucket.peak_demand,
        "peak_time": to_datetime(bucket.peak_time_ms),
        "flags": flags,
        "cost": bucket.cost,
        "co2_kg": bucket.co2_kg,
        "currency": currency if bucket.cost is not None else None,
    }


def bucket_of(row: Rollup) -> Bucket:
    return Bucket(
        start_ms=to_ms(row.bucket_start),
        end_ms=to_ms(row.bucket_end),
        value=row.value,
        covered_ms=row.covered_ms,
        readings=row.reading_count,
        resets=row.reset_count,
        rollovers=row.rollover_count,
        peak_demand=row.peak_demand,
        peak_time_ms=to_ms(row.peak_time),
        cost=row.cost,
        co2_kg=row.co2_kg,
    )


def row_values(row: Rollup) -> dict[str, Any]:
    """A stored rollup row as a dict of its columns (the shape rollup_row writes)."""
    return {column.key: getattr(row, column.key) for column in Rollup.__mapper__.column_attrs}


def anomaly_to_proto(row: AnomalyRow) -> analytics_pb2.Anomaly:
    return analytics_pb2.Anomaly(
        anomaly_id=row.id,
        meter_id=row.meter_id,
        site_id=row.site_id,
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        value=row.value,
        expected=row.expected,
        score=row.score,
        unit=row.unit,
        detect_time=timestamp(row.detect_time),
    )
