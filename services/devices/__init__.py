"""The devices service: sites, meters, who may see which meter, and meter credentials."""

from services.kernel.service import ServiceInfo

SERVICE_INFO = ServiceInfo(
    name="devices",
    grpc_services=("energymesh.devices.v1.DeviceService",),
    default_port=50052,
    order=10,
    internal_methods=("/energymesh.devices.v1.DeviceService/AuthenticateCredential",),
)
