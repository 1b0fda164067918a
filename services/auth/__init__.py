"""The auth service: organizations, users, sessions, signing keys and the audit trail."""

from services.kernel.service import ServiceInfo

SERVICE_INFO = ServiceInfo(
    name="auth",
    grpc_services=("energymesh.auth.v1.AuthService",),
    default_port=50051,
    order=0,
)
