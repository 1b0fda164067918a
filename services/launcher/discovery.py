"""Finds the service packages: every package under services/ except the plumbing."""

from __future__ import annotations

import importlib
import pkgutil

import services
from services.kernel.service import ServiceInfo

NOT_SERVICES = frozenset({"kernel", "launcher"})


def discover_services() -> list[ServiceInfo]:
    """SERVICE_INFO of every service package, in start order (order, then name)."""
    found: list[ServiceInfo] = []
    for module in pkgutil.iter_modules(services.__path__):
        if not module.ispkg or module.name in NOT_SERVICES:
            continue
        package = importlib.import_module(f"services.{module.name}")
        info = getattr(package, "SERVICE_INFO", None)
        if not isinstance(info, ServiceInfo):
            raise LookupError(
                f"services/{module.name}/__init__.py must define SERVICE_INFO = ServiceInfo(...)"
            )
        if info.name != module.name:
            raise LookupError(f"services/{module.name} declares SERVICE_INFO.name={info.name!r}")
        found.append(info)
    return sorted(found, key=lambda info: (info.order, info.name))
