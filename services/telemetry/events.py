"""Events the telemetry service publishes and consumes.

Published (via the outbox, proto3 JSON, energymesh/telemetry/v1/events.proto) on stream
TELEMETRY: telemetry.readings.committed, one per meter per group commit.

Consumed, by every telemetry process for itself (ordered ephemeral consumers, not shared
durable ones, because each process keeps its own caches), from stream DEVICES:
devices.credential.revoked (drop cached authentications, stop open streams at their next
batch) and devices.meter.* (what a meter's register is, for plausibility; a purged meter's
readings are deleted).
"""

from __future__ import annotations

from services.kernel.messaging import Stream

READINGS_COMMITTED = "telemetry.readings.committed"
CREDENTIAL_REVOKED = "devices.credential.revoked"
METER_EVENTS = "devices.meter.>"
METER_CREATED = "devices.meter.created"
METER_UPDATED = "devices.meter.updated"
METER_DECOMMISSIONED = "devices.meter.decommissioned"
METER_PURGED = "devices.meter.purged"

# The same declarations as the devices service's (services/devices/events.py): declaring a
# stream is idempotent only when every service declares it identically.
TELEMETRY_STREAM = Stream("TELEMETRY", ("telemetry.>",))
DEVICES_STREAM = Stream("DEVICES", ("devices.>",))
