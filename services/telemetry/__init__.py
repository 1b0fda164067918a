"""The telemetry service: ingests meter readings exactly once and serves them back."""

from services.kernel.service import ServiceInfo

SERVICE_INFO = ServiceInfo(
    name="telemetry",
    grpc_services=("energymesh.telemetry.v1.TelemetryService",),
    default_port=50053,
    order=20,
)
