"""The gRPC adapter: turns requests into domain calls and domain results into responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2, json_format, struct_pb2
from google.protobuf.message import Message

from energymesh.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.domain import AuthDomain, Session, UserChanges
from services.auth.models import AuditEvent, User
from services.kernel.context import Role
from services.kernel.errors import InvalidArgument
from services.kernel.interceptors import caller
from services.kernel.pagination import decode_token, encode_token, page_size
from services.kernel.permissions import Permission
from services.kernel.protos import timestamp

SERVICE = "energymesh.auth.v1.AuthService"

# Every RPC's access rule. The kernel refuses to start if an RPC is missing here.
ACCESS: dict[str, Permission] = {
    f"/{SERVICE}/{method}": permission
    for method, permission in {
        "Register": Permission.PUBLIC,
        "Login": Permission.PUBLIC,
        "RefreshToken": Permission.PUBLIC,
        "Logout": Permission.PUBLIC,
        "RequestPasswordReset": Permission.PUBLIC,
        "ResetPassword": Permission.PUBLIC,
        "VerifyEmail": Permission.PUBLIC,
        "GetJwks": Permission.PUBLIC,
        "GetCurrentUser": Permission.AUTHENTICATED,
        "GetUser": Permission.AUTHENTICATED,
        "ListUsers": Permission.USERS_MANAGE,
        "CreateUser": Permission.USERS_MANAGE,
        "UpdateUser": Permission.AUTHENTICATED,
        "DeleteUser": Permission.USERS_MANAGE,
        "ListAuditEvents": Permission.AUDIT_READ,
    }.items()
}

ROLES = {
    auth_pb2.ROLE_ADMIN: Role.ADMIN,
    auth_pb2.ROLE_MANAGER: Role.MANAGER,
    auth_pb2.ROLE_OPERATOR: Role.OPERATOR,
    auth_pb2.ROLE_VIEWER: Role.VIEWER,
}
ROLE_VALUES = {role: value for value, role in ROLES.items()}


def role_from_proto(value: int, field: str) -> Role | None:
    if value == auth_pb2.ROLE_UNSPECIFIED:
        return None
    if value not in ROLES:
        raise InvalidArgument([(field, "is not a known role")])
    return ROLES[value]  # type: ignore[index]


def user_to_proto(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=user.id,
        organization_id=user.organization_id,
        email=user.email,
        display_name=user.display_name,
        role=ROLE_VALUES[Role(user.role)],
        disabled=user.disabled,
        email_verified=user.email_verified,
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
    )


def audit_event_to_proto(event: AuditEvent) -> auth_pb2.AuditEvent:
    details = struct_pb2.Struct()
    details.update(event.details)
    return auth_pb2.AuditEvent(
        event_id=event.event_id,
        organization_id=event.organization_id,
        actor_user_id=event.actor_user_id,
        action=event.action,
        target=event.target,
        service=event.service,
        client_address=event.client_address,
        details=details,
        event_time=timestamp(event.event_time),
    )


def session_fields(session: Session) -> dict[str, Any]:
    return {
        "access_token": session.access_token,
        "refresh_token": session.refresh_token,
        "token_type": "Bearer",
        "expires_in": session.expires_in,
    }


def user_position(user: User) -> list[Any]:
    return [user.create_time.isoformat(), user.id]


def parse_position(position: list[Any] | None) -> tuple[datetime, str] | None:
    if position is None:
        return None
    try:
        return datetime.fromisoformat(str(position[0])), str(position[1])
    except (ValueError, IndexError):
        raise InvalidArgument([("page_token", "is not a token this API issued")]) from None


def filters_of(request: Message, *names: str) -> dict[str, Any]:
    return {name: json_format.MessageToDict(request).get(name) for name in names}


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, domain: AuthDomain) -> None:
        self.domain = domain

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Any
    ) -> auth_pb2.RegisterResponse:
        session = await self.domain.register(
            request.email, request.password, request.display_name, request.organization_name
        )
        return auth_pb2.RegisterResponse(
            user=user_to_proto(session.user), **session_fields(session)
        )

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        session = await self.domain.login(request.email, request.password)
        return auth_pb2.LoginResponse(**session_fields(session))

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: Any
    ) -> auth_pb2.RefreshTokenResponse:
        session = await self.domain.refresh(request.refresh_token)
        return auth_pb2.RefreshTokenResponse(**session_fields(session))

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Any
    ) -> auth_pb2.LogoutResponse:
        await self.domain.logout(request.refresh_token)
        return auth_pb2.LogoutResponse()

    async def RequestPasswordReset(
        self, request: auth_pb2.RequestPasswordResetRequest, context: Any
    ) -> auth_pb2.RequestPasswordResetResponse:
        await self.domain.request_password_reset(request.email)
        return auth_pb2.RequestPasswordResetResponse()

    async def ResetPassword(
        self, request: auth_pb2.ResetPasswordRequest, context: Any
    ) -> auth_pb2.ResetPasswordResponse:
        await self.domain.reset_password(request.token, request.new_password)
        return auth_pb2.ResetPasswordResponse()

    async def VerifyEmail(
        self, request: auth_pb2.VerifyEmailRequest, context: Any
    ) -> auth_pb2.VerifyEmailResponse:
        await self.domain.verify_email(request.token)
        return auth_pb2.VerifyEmailResponse()

    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: Any
    ) -> auth_pb2.GetJwksResponse:
        response = auth_pb2.GetJwksResponse()
        json_format.ParseDict(dict(await self.domain.keyring.jwks()), response)
        return response

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Any
    ) -> auth_pb2.User:
        me = caller()
        return user_to_proto(await self.domain.get_user(me, me.user_id))

    async def GetUser(self, request: auth_pb2.GetUserRequest, context: Any) -> auth_pb2.User:
        return user_to_proto(await self.domain.get_user(caller(), request.user_id))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Any
    ) -> auth_pb2.ListUsersResponse:
        limit = page_size(request.page_size)
        role = role_from_proto(request.role, "role")
        filters = filters_of(request, "role")
        after = parse_position(decode_token(request.page_token, filters))
        users = await self.domain.list_users(caller(), role, after, limit + 1)
        page, more = users[:limit], len(users) > limit
        return auth_pb2.ListUsersResponse(
            users=[user_to_proto(user) for user in page],
            next_page_token=encode_token(user_position(page[-1]), filters) if more else "",
        )

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Any) -> auth_pb2.User:
        user = request.user
        created = await self.domain.create_user(
            caller(),
            user.email,
            user.display_name,
            role_from_proto(user.role, "user.role"),
            request.password,
        )
        return user_to_proto(created)

    async def UpdateUser(self, request: auth_pb2.UpdateUserRequest, context: Any) -> auth_pb2.User:
        user = request.user
        if not user.user_id:
            raise InvalidArgument([("user.user_id", "is required")])
        paths = set(request.update_mask.paths)
        unknown = paths - {"display_name", "role", "disabled"}
        if unknown:
            raise InvalidArgument([("update_mask", f"cannot update {', '.join(sorted(unknown))}")])
        if not paths:
            # No mask: update what the request sets (disabled=false cannot be told from unset).
            paths = {name for name in ("display_name", "role", "disabled") if getattr(user, name)}
        role = role_from_proto(user.role, "user.role") if "role" in paths else None
        if "role" in paths and role is None:
            raise InvalidArgument([("user.role", "is required when role is in update_mask")])
        changes = UserChanges(
            display_name=user.display_name if "display_name" in paths else None,
            role=role,
            disabled=user.disabled if "disabled" in paths else None,
        )
        return user_to_proto(await self.domain.update_user(caller(), user.user_id, changes))

    async def DeleteUser(
        self, request: auth_pb2.DeleteUserRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.domain.delete_user(caller(), request.user_id)
        return empty_pb2.Empty()

    async def ListAuditEvents(
        self, request: auth_pb2.ListAuditEventsRequest, context: Any
    ) -> auth_pb2.ListAuditEventsResponse:
        limit = page_size(request.page_size)
        filters = filters_of(request, "actionPrefix")
        before = parse_position(decode_token(request.page_token, filters))
        found = await self.domain.list_audit_events(
            caller(), request.action_prefix, before, limit + 1
        )
        page, more = found[:limit], len(found) > limit
        last = [page[-1].event_time.isoformat(), page[-1].event_id] if more else []
        return auth_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_to_proto(event) for event in page],
            next_page_token=encode_token(last, filters) if more else "",
        )
