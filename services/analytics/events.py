"""Events the analytics service consumes and publishes.

Consumed with durable JetStream consumers (shared by every replica, explicit acks):

- telemetry.readings.committed (stream TELEMETRY), one per meter per group commit of the
  telemetry service, proto3 JSON of energymesh.telemetry.v1.ReadingsCommitted:
  {"organizationId", "meterId", "firstTime", "lastTime", "count", "batchIds"}. The buckets
  the new readings affect are recomputed.
- devices.> (stream DEVICES): devices.meter.{created,updated,decommissioned} and
  devices.site.{created,updated} keep the local copy of what the rollups need to know about a
  meter (register, unit, multiplier, rollover, cadence) and its site (time zone); a change of
  the meter's site, multiplier, rollover or cadence, or of the site's time zone, rebuilds the
  meter's rollups; devices.meter.purged removes them.
- analytics.pricing.changed (stream ANALYTICS), its own, published through its outbox in the
  transaction that changed a tariff, an assignment or an emission factor: the stored rollups
  of the meters concerned are repriced (services/analytics/pricing.py). Internal to analytics,
  a JSON object (google.protobuf.Struct): {"organizationId", "commodity" (COMMODITY_…),
  "siteId"?, "direction"? (FLOW_DIRECTION_…), "startTime"?, "endTime"? (absent: open),
  "reason"}.

Published:
- analytics.anomaly.detected (stream ANALYTICS): energymesh.analytics.v1.AnomalyDetected,
  once per anomaly (Nats-Msg-Id: the anomaly id), for the notification service.
"""

from __future__ import annotations

from services.kernel.messaging import Stream

READINGS_COMMITTED = "telemetry.readings.committed"
DEVICE_EVENTS = "devices.>"
METER_CREATED = "devices.meter.created"
METER_UPDATED = "devices.meter.updated"
METER_DECOMMISSIONED = "devices.meter.decommissioned"
METER_PURGED = "devices.meter.purged"
SITE_CREATED = "devices.site.created"
SITE_UPDATED = "devices.site.updated"
PRICING_CHANGED = "analytics.pricing.changed"
ANOMALY_DETECTED = "analytics.anomaly.detected"

# The same declarations as the services that own them (services/telemetry/events.py,
# services/devices/events.py): declaring a stream is idempotent only when every service
# declares it identically, so keep them in step.
TELEMETRY_STREAM = Stream("TELEMETRY", ("telemetry.>",))
DEVICES_STREAM = Stream("DEVICES", ("devices.>",))
# Analytics' own events.
ANALYTICS_STREAM = Stream("ANALYTICS", ("analytics.>",))
