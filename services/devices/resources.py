"""Stored rows as API resources (used by the servicer and by the events), and the API's
enumerations as the domain's."""

from __future__ import annotations

import hashlib
from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from energymesh.devices.v1 import devices_pb2
from services.devices.models import IngestKey, Meter, MeterAssignee, MeterToken, Site
from services.devices.validation import (
    Commodity,
    Connectivity,
    Direction,
    MeterState,
    RegisterType,
    connectivity_of,
)
from services.kernel.protos import timestamp

COMMODITIES: dict[int, Commodity] = {
    devices_pb2.COMMODITY_ELECTRICITY: Commodity.ELECTRICITY,
    devices_pb2.COMMODITY_GAS: Commodity.GAS,
    devices_pb2.COMMODITY_WATER: Commodity.WATER,
    devices_pb2.COMMODITY_HEAT: Commodity.HEAT,
}
DIRECTIONS: dict[int, Direction] = {
    devices_pb2.FLOW_DIRECTION_IMPORT: Direction.IMPORT,
    devices_pb2.FLOW_DIRECTION_EXPORT: Direction.EXPORT,
}
REGISTER_TYPES: dict[int, RegisterType] = {
    devices_pb2.REGISTER_TYPE_CUMULATIVE: RegisterType.CUMULATIVE,
    devices_pb2.REGISTER_TYPE_INTERVAL: RegisterType.INTERVAL,
    devices_pb2.REGISTER_TYPE_INSTANTANEOUS: RegisterType.INSTANTANEOUS,
}
METER_STATES: dict[int, MeterState] = {
    devices_pb2.METER_STATE_ACTIVE: MeterState.ACTIVE,
    devices_pb2.METER_STATE_INACTIVE: MeterState.INACTIVE,
    devices_pb2.METER_STATE_DECOMMISSIONED: MeterState.DECOMMISSIONED,
}
CONNECTIVITIES: dict[int, Connectivity] = {
    devices_pb2.CONNECTIVITY_ONLINE: Connectivity.ONLINE,
    devices_pb2.CONNECTIVITY_OFFLINE: Connectivity.OFFLINE,
}


def proto_value(table: dict[int, str], value: str) -> int:
    """The proto enum number of a stored word."""
    return next(number for number, word in table.items() if word == value)


def optional_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    return timestamp(moment) if moment is not None else None


def duration(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def etag(resource_id: str, version: int) -> str:
    """Opaque and changes with every write."""
    return hashlib.sha256(f"{resource_id}:{version}".encode()).hexdigest()[:20]


def site_to_proto(site: Site) -> devices_pb2.Site:
    return devices_pb2.Site(
        site_id=site.id,
        organization_id=site.organization_id,
        name=site.name,
        time_zone=site.time_zone,
        address=site.address,
        latitude=site.latitude,
        longitude=site.longitude,
        labels=site.labels,
        etag=etag(site.id, site.version),
        create_time=timestamp(site.create_time),
        update_time=timestamp(site.update_time),
    )


def meter_to_proto(meter: Meter, now: datetime) -> devices_pb2.Meter:
    connectivity = connectivity_of(meter.last_seen_time, meter.expected_interval_seconds, now)
    return devices_pb2.Meter(
        meter_id=meter.id,
        organization_id=meter.organization_id,
        site_id=meter.site_id,
        serial_number=meter.serial_number,
        name=meter.name,
        commodity=proto_value(COMMODITIES, meter.commodity),  # type: ignore[arg-type]
        direction=proto_value(DIRECTIONS, meter.direction),  # type: ignore[arg-type]
        unit=meter.unit,
        register_type=proto_value(REGISTER_TYPES, meter.register_type),  # type: ignore[arg-type]
        multiplier=meter.multiplier,
        rollover_value=meter.rollover_value,
        expected_interval=duration(meter.expected_interval_seconds),
        labels=meter.labels,
        state=proto_value(METER_STATES, meter.state),  # type: ignore[arg-type]
        last_seen_time=optional_timestamp(meter.last_seen_time),
        connectivity=proto_value(CONNECTIVITIES, connectivity),  # type: ignore[arg-type]
        etag=etag(meter.id, meter.version),
        create_time=timestamp(meter.create_time),
        update_time=timestamp(meter.update_time),
    )


def meter_token_to_proto(token: MeterToken) -> devices_pb2.MeterToken:
    return devices_pb2.MeterToken(
        token_id=token.id,
        meter_id=token.meter_id,
        display_name=token.display_name,
        prefix=token.prefix,
        expire_time=optional_timestamp(token.expire_time),
        last_used_time=optional_timestamp(token.last_used_time),
        create_time=timestamp(token.create_time),
    )


def ingest_key_to_proto(key: IngestKey) -> devices_pb2.IngestKey:
    return devices_pb2.IngestKey(
        ingest_key_id=key.id,
        organization_id=key.organization_id,
        display_name=key.display_name,
        site_id=key.site_id or "",
        prefix=key.prefix,
        expire_time=optional_timestamp(key.expire_time),
        last_used_time=optional_timestamp(key.last_used_time),
        create_time=timestamp(key.create_time),
    )


def assignee_to_proto(assignee: MeterAssignee) -> devices_pb2.MeterAssignee:
    return devices_pb2.MeterAssignee(
        meter_id=assignee.meter_id,
        user_id=assignee.user_id,
        create_time=timestamp(assignee.create_time),
    )
