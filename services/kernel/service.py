"""What the launcher, the gateway and Kubernetes need to know about a service package.

Each service package's __init__.py defines SERVICE_INFO; the launcher discovers them, so adding
a service means adding its package, not editing the plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceInfo:
    # Short name: the package under services/, the database schema, the log prefix.
    name: str
    # Fully qualified gRPC service names it serves, e.g. "energymesh.auth.v1.AuthService".
    grpc_services: tuple[str, ...]
    # Port `make run` gives it on 127.0.0.1 (tests use free ports instead).
    default_port: int
    # Start order: lower first. Auth comes first because the others fetch its JWKS.
    order: int = 100
    # Methods ("/pkg.Service/Method") only other services call: the gateway does not route
    # them, so they are reachable inside the mesh only.
    internal_methods: tuple[str, ...] = ()
