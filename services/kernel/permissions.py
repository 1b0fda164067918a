"""The permission matrix: which role may do what. The one place every service checks access.

Each service declares, for every RPC it serves, the permission it needs (or PUBLIC); the
kernel interceptor enforces it before the handler runs. Finer rules that depend on the
resource (a viewer sees only assigned meters; anyone may read themselves) live in the domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from services.kernel.context import Caller, Role
from services.kernel.errors import PermissionDenied


class Permission(StrEnum):
    # No token needed (login, register, JWKS ...).
    PUBLIC = "public"
    # Any signed-in user of the organization.
    AUTHENTICATED = "authenticated"
    USERS_MANAGE = "users.manage"
    AUDIT_READ = "audit.read"
    ORGANIZATION_READ = "organization.read"
    SITES_MANAGE = "sites.manage"
    METERS_MANAGE = "meters.manage"
    CREDENTIALS_MANAGE = "credentials.manage"
    TARIFFS_MANAGE = "tariffs.manage"
    ALERT_RULES_MANAGE = "alert_rules.manage"
    READINGS_WRITE = "readings.write"
    ALERTS_ACKNOWLEDGE = "alerts.acknowledge"
    # Delete data for good (purge a meter and its readings) instead of retiring it.
    DATA_PURGE = "data.purge"
    # Read what the caller may see; viewers are narrowed to their assigned meters by the domain.
    DATA_READ = "data.read"


_VIEWER = frozenset({Permission.AUTHENTICATED, Permission.DATA_READ})
_OPERATOR = _VIEWER | {
    Permission.ORGANIZATION_READ,
    Permission.READINGS_WRITE,
    Permission.ALERTS_ACKNOWLEDGE,
}
_MANAGER = _OPERATOR | {
    Permission.SITES_MANAGE,
    Permission.METERS_MANAGE,
    Permission.CREDENTIALS_MANAGE,
    Permission.TARIFFS_MANAGE,
    Permission.ALERT_RULES_MANAGE,
}
_ADMIN = _MANAGER | {Permission.USERS_MANAGE, Permission.AUDIT_READ, Permission.DATA_PURGE}

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: _ADMIN,
    Role.MANAGER: _MANAGER,
    Role.OPERATOR: _OPERATOR,
    Role.VIEWER: _VIEWER,
}


def has_permission(caller: Caller, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[caller.role]


def require(caller: Caller, permission: Permission) -> None:
    if not has_permission(caller, permission):
        raise PermissionDenied(f"role {caller.role} may not do this ({permission} is required)")
