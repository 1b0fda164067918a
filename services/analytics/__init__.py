"""The analytics service: consumption rollups kept up to date from committed readings."""

from services.kernel.service import ServiceInfo

SERVICE_INFO = ServiceInfo(
    name="analytics",
    grpc_services=("energymesh.analytics.v1.AnalyticsService",),
    default_port=50054,
    order=30,
)
