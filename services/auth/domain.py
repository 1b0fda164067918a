"""What the auth service does, independent of gRPC: registration, sessions, password and
email flows, user administration and the audit trail."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth import events, repository
from services.auth.config import AuthConfig
from services.auth.keys import Keyring
from services.auth.models import (
    AuditEvent,
    LoginAttempt,
    OneTimeToken,
    Organization,
    RefreshToken,
    User,
)
from services.auth.security import (
    AccessTokenIssuer,
    hash_password,
    new_opaque_token,
    token_hash,
    verify_password,
)
from services.kernel.context import Caller, Role, current_client_address
from services.kernel.database import Database
from services.kernel.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Violations,
)
from services.kernel.outbox import Outbox
from services.kernel.permissions import Permission, has_permission

log = logging.getLogger(__name__)

PASSWORD_RESET = "password_reset"
EMAIL_VERIFICATION = "email_verification"
MIN_PASSWORD, MAX_PASSWORD = 10, 256
UPDATABLE_FIELDS = frozenset({"display_name", "role", "disabled"})


@dataclass(frozen=True)
class Session:
    """What a successful login, registration or refresh hands back."""

    user: User
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class UserChanges:
    display_name: str | None = None
    role: Role | None = None
    disabled: bool | None = None


def now() -> datetime:
    return datetime.now(UTC)


def email_key(email: str) -> str:
    return email.strip().lower()


def check_email(violations: Violations, field: str, email: str) -> str:
    """Returns the normalised address, or records why it is not one."""
    if not email.strip():
        violations.add(field, "is required")
        return ""
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as error:
        violations.add(field, str(error))
        return ""


def check_password(violations: Violations, field: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        violations.add(field, f"must be at least {MIN_PASSWORD} characters")
    elif len(password) > MAX_PASSWORD:
        violations.add(field, f"must be at most {MAX_PASSWORD} characters")


def check_text(violations: Violations, field: str, value: str, maximum: int) -> None:
    if not value.strip():
        violations.add(field, "is required")
    elif len(value) > maximum:
        violations.add(field, f"must be at most {maximum} characters")


def parse_uuid(field: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument([(field, "must be a UUID")]) from None


class AuthDomain:
    def __init__(
        self, config: AuthConfig, database: Database, outbox: Outbox, keyring: Keyring
    ) -> None:
        self.config = config
        self.database = database
        self.outbox = outbox
        self.keyring = keyring
        self.issuer = AccessTokenIssuer(
            config.jwt_issuer, config.jwt_audience, config.access_token_ttl_seconds
        )

    # --- sessions -------------------------------------------------------------------------

    async def register(
        self, email: str, password: str, display_name: str, organization_name: str
    ) -> Session:
        violations = Violations()
        address = check_email(violations, "email", email)
        check_password(violations, "password", password)
        check_text(violations, "display_name", display_name, 100)
        check_text(violations, "organization_name", organization_name, 200)
        violations.raise_if_any()
        password_hash = await hash_password(password)
        try:
            async with self.database.transaction() as session:
                organization = Organization(name=organization_name.strip())
                session.add(organization)
                await session.flush()
                user = User(
                    organization_id=organization.id,
                    email=address,
                    email_key=email_key(address),
                    display_name=display_name.strip(),
                    role=Role.ADMIN.value,
                    password_hash=password_hash,
                )
                session.add(user)
                await session.flush()
                await self._request_verification(session, user)
                self._audit(session, user.organization_id, user.id, "auth.user.registered", user)
                result = await self._start_session(session, user)
        except IntegrityError:
            raise AlreadyExists(
                "an account with this email already exists", metadata={"field": "email"}
            ) from None
        self.outbox.wake()
        return result

    async def login(self, email: str, password: str) -> Session:
        violations = Violations()
        check_text(violations, "email", email, 320)
        check_text(violations, "password", password, MAX_PASSWORD)
        violations.raise_if_any()
        key, address = email_key(email), current_client_address.get()
        async with self.database.transaction() as session:
            await self._check_throttle(session, key, address)
            user = await repository.user_by_email(session, key)
        password_ok = await verify_password(user.password_hash if user else None, password)
        failure: DomainError | None = None
        async with self.database.transaction() as session:
            succeeded = user is not None and password_ok and not user.disabled
            session.add(LoginAttempt(email_key=key, client_address=address, succeeded=succeeded))
            org = user.organization_id if user else ""
            if user is None or not succeeded:
                reason = "disabled" if user and password_ok else "bad_credentials"
                self._audit(
                    session, org, "", "auth.login.failed", user, {"email": key, "reason": reason}
                )
                failure = Unauthenticated(
                    "this account is disabled"
                    if reason == "disabled"
                    else "invalid email or password"
                )
            else:
                self._audit(session, org, user.id, "auth.login.succeeded", user)
                result = await self._start_session(session, user)
        if failure is not None:
            raise failure
        return result

    async def refresh(self, refresh_token: str) -> Session:
        if not refresh_token:
            raise InvalidArgument([("refresh_token", "is required")])
        failure: DomainError | None = None
        async with self.database.transaction() as session:
            stored = await repository.refresh_token_by_hash(session, token_hash(refresh_token))
            user = await repository.user_by_id(session, stored.user_id) if stored else None
            moment = now()
            if stored is None or user is None:
                failure = Unauthenticated("refresh token is not valid")
            elif stored.use_time is not None or stored.revoke_time is not None:
                if stored.revoke_time is None:
                    # A spent token came back: someone holds a copy. End the whole session.
                    await repository.revoke_family(session, stored.family_id, moment)
                    self._audit(
                        session,
                        user.organization_id,
                        user.id,
                        "auth.session.reuse_detected",
                        user,
                        {"family_id": stored.family_id},
                    )
                failure = Unauthenticated("refresh token was already used or revoked")
            elif stored.expire_time <= moment:
                failure = Unauthenticated("refresh token expired")
            elif user.disabled:
                failure = Unauthenticated("this account is disabled")
            else:
                stored.use_time = moment
                result = await self._start_session(session, user, family_id=stored.family_id)
        if failure is not None:
            raise failure
        return result

    async def logout(self, refresh_token: str) -> None:
        if not refresh_token:
            raise InvalidArgument([("refresh_token", "is required")])
        async with self.database.transaction() as session:
            stored = await repository.refresh_token_by_hash(session, token_hash(refresh_token))
            if stored is None:
                return  # idempotent, and reveals nothing
            await repository.revoke_family(session, stored.family_id, now())
            user = await repository.user_by_id(session, stored.user_id)
            if user is not None:
                self._audit(session, user.organization_id, user.id, "auth.logout", user)

    async def _start_session(
        self, session: AsyncSession, user: User, family_id: str | None = None
    ) -> Session:
        refresh = new_opaque_token()
        session.add(
            RefreshToken(
                family_id=family_id or str(uuid.uuid4()),
                user_id=user.id,
                token_hash=token_hash(refresh),
                expire_time=now() + timedelta(seconds=self.config.refresh_token_ttl_seconds),
            )
        )
        key = await self.keyring.active()
        access = self.issuer.issue(
            kid=key.kid,
            key=key.private_key,
            user_id=user.id,
            organization_id=user.organization_id,
            role=Role(user.role),
        )
        return Session(user, access, refresh, self.config.access_token_ttl_seconds)

    async def _check_throttle(self, session: AsyncSession, key: str, address: str) -> None:
        window = timedelta(seconds=self.config.login_window_seconds)
        since = now() - window
        checks = (
            (self.config.login_max_failures_per_account, {"email_key": key}),
            (self.config.login_max_failures_per_address, {"address": address}),
        )
        for limit, scope in checks:
            count, oldest = await repository.recent_failures(session, since=since, **scope)
            if count >= limit and oldest is not None:
                retry_after = max(1, int((oldest + window - now()).total_seconds()) + 1)
                raise ResourceExhausted(
                    "too many failed sign-in attempts; try again later",
                    retry_after_seconds=retry_after,
                )

    # --- password and email flows ---------------------------------------------------------

    async def request_password_reset(self, email: str) -> None:
        violations = Violations()
        check_text(violations, "email", email, 320)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            user = await repository.user_by_email(session, email_key(email))
            if user is None or user.disabled:
                log.info("password reset requested for an unknown or disabled account")
                return
            await self._request_password_reset(session, user, invitation=False)
            self._audit(session, user.organization_id, "", "auth.password_reset.requested", user)
        self.outbox.wake()

    async def reset_password(self, token: str, new_password: str) -> None:
        violations = Violations()
        check_text(violations, "token", token, 200)
        check_password(violations, "new_password", new_password)
        violations.raise_if_any()
        password_hash = await hash_password(new_password)
        async with self.database.transaction() as session:
            user = await self._redeem(session, token, PASSWORD_RESET)
            moment = now()
            user.password_hash = password_hash
            user.tokens_valid_after = moment
            # Following the link proves the address, like a verification link would.
            user.email_verified = True
            await repository.spend_one_time_tokens(session, user.id, PASSWORD_RESET, moment)
            await repository.revoke_user_sessions(session, user.id, moment)
            self._audit(
                session, user.organization_id, user.id, "auth.password_reset.completed", user
            )

    async def verify_email(self, token: str) -> None:
        violations = Violations()
        check_text(violations, "token", token, 200)
        violations.raise_if_any()
        async with self.database.transaction() as session:
            user = await self._redeem(session, token, EMAIL_VERIFICATION)
            user.email_verified = True
            self._audit(session, user.organization_id, user.id, "auth.email.verified", user)

    async def _redeem(self, session: AsyncSession, token: str, purpose: str) -> User:
        stored = await repository.one_time_token(session, token_hash(token), purpose)
        user = await repository.user_by_id(session, stored.user_id) if stored else None
        if (
            stored is None
            or user is None
            or stored.use_time is not None
            or stored.expire_time <= now()
        ):
            raise InvalidArgument([("token", "is invalid, expired or already used")])
        stored.use_time = now()
        return user

    async def _issue_one_time_token(
        self, session: AsyncSession, user: User, purpose: str, ttl_seconds: int
    ) -> tuple[str, datetime]:
        token = new_opaque_token()
        expire_time = now() + timedelta(seconds=ttl_seconds)
        session.add(
            OneTimeToken(
                user_id=user.id,
                purpose=purpose,
                token_hash=token_hash(token),
                expire_time=expire_time,
            )
        )
        if not self.config.production:
            log.info("dev mode: %s token for %s: %s", purpose, user.email, token)
        return token, expire_time

    async def _request_password_reset(
        self, session: AsyncSession, user: User, *, invitation: bool
    ) -> None:
        ttl = (
            self.config.invitation_ttl_seconds
            if invitation
            else self.config.password_reset_ttl_seconds
        )
        token, expire_time = await self._issue_one_time_token(session, user, PASSWORD_RESET, ttl)
        await self.outbox.add(
            session,
            events.PASSWORD_RESET_REQUESTED,
            events.password_reset_requested(user, token, expire_time, invitation=invitation),
        )

    async def _request_verification(self, session: AsyncSession, user: User) -> None:
        token, expire_time = await self._issue_one_time_token(
            session, user, EMAIL_VERIFICATION, self.config.email_verification_ttl_seconds
        )
        await self.outbox.add(
            session,
            events.EMAIL_VERIFICATION_REQUESTED,
            events.email_verification_requested(user, token, expire_time),
        )

    # --- users ----------------------------------------------------------------------------

    async def authenticate(self, caller: Caller) -> Caller:
        """Re-check a verified token against the database: deleted or disabled users, and
        tokens issued before a password reset or role change, are refused at once."""
        async with self.database.sessions() as session:
            user = await repository.user_by_id(session, caller.user_id)
        if user is None or user.disabled or user.organization_id != caller.organization_id:
            raise Unauthenticated("the user of this token no longer exists or is disabled")
        if caller.issued_at < user.tokens_valid_after.timestamp():
            raise Unauthenticated("this token was revoked; sign in again")
        return Caller(
            user_id=user.id,
            organization_id=user.organization_id,
            role=Role(user.role),
            token_id=caller.token_id,
            issued_at=caller.issued_at,
        )

    async def get_user(self, caller: Caller, user_id: str) -> User:
        async with self.database.sessions() as session:
            return await self._visible_user(session, caller, user_id)

    async def _visible_user(
        self, session: AsyncSession, caller: Caller, user_id: str, *, lock: bool = False
    ) -> User:
        """A user of the caller's organization; any other organization's user is NOT_FOUND."""
        user = await repository.user_by_id(session, parse_uuid("user_id", user_id), lock=lock)
        if user is None or user.organization_id != caller.organization_id:
            raise NotFound(f"user {user_id} not found")
        if user.id != caller.user_id and not has_permission(caller, Permission.ORGANIZATION_READ):
            raise PermissionDenied("viewers may only read their own user")
        return user

    async def list_users(
        self, caller: Caller, role: Role | None, after: tuple[datetime, str] | None, limit: int
    ) -> list[User]:
        async with self.database.sessions() as session:
            return await repository.list_users(
                session,
                caller.organization_id,
                role=role.value if role else None,
                after=after,
                limit=limit,
            )

    async def create_user(
        self, caller: Caller, email: str, display_name: str, role: Role | None, password: str
    ) -> User:
        violations = Violations()
        address = check_email(violations, "user.email", email)
        check_text(violations, "user.display_name", display_name, 100)
        violations.check(role is not None, "user.role", "is required")
        if password:
            check_password(violations, "password", password)
        violations.raise_if_any()
        assert role is not None
        password_hash = await hash_password(password) if password else None
        try:
            async with self.database.transaction() as session:
                user = User(
                    organization_id=caller.organization_id,
                    email=address,
                    email_key=email_key(address),
                    display_name=display_name.strip(),
                    role=role.value,
                    password_hash=password_hash,
                )
                session.add(user)
                await session.flush()
                if password_hash is None:
                    await self._request_password_reset(session, user, invitation=True)
                else:
                    await self._request_verification(session, user)
                self._audit(
                    session,
                    caller.organization_id,
                    caller.user_id,
                    "auth.user.created",
                    user,
                    {"role": role.value, "invited": password_hash is None},
                )
        except IntegrityError:
            raise AlreadyExists(
                "an account with this email already exists", metadata={"field": "user.email"}
            ) from None
        self.outbox.wake()
        return user

    async def update_user(self, caller: Caller, user_id: str, changes: UserChanges) -> User:
        if changes.display_name is not None:
            violations = Violations()
            check_text(violations, "user.display_name", changes.display_name, 100)
            violations.raise_if_any()
        async with self.database.transaction() as session:
            user = await self._visible_user(session, caller, user_id, lock=True)
            touches_access = changes.role is not None or changes.disabled is not None
            if (touches_access or user.id != caller.user_id) and not has_permission(
                caller, Permission.USERS_MANAGE
            ):
                raise PermissionDenied("only admins change other users, roles and access")
            loses_admin = user.role == Role.ADMIN.value and (
                (changes.role is not None and changes.role is not Role.ADMIN)
                or changes.disabled is True
            )
            if loses_admin:
                await self._keep_an_admin(session, user)
            before = {
                "role": user.role,
                "disabled": user.disabled,
                "display_name": user.display_name,
            }
            if changes.display_name is not None:
                user.display_name = changes.display_name.strip()
            if changes.role is not None and changes.role.value != user.role:
                user.role = changes.role.value
                user.tokens_valid_after = now()
            if changes.disabled is not None and changes.disabled != user.disabled:
                user.disabled = changes.disabled
                if changes.disabled:
                    user.tokens_valid_after = now()
                    await repository.revoke_user_sessions(session, user.id, now())
            after = {
                "role": user.role,
                "disabled": user.disabled,
                "display_name": user.display_name,
            }
            changed = {
                k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]
            }
            if changed:
                self._audit(
                    session,
                    caller.organization_id,
                    caller.user_id,
                    "auth.user.updated",
                    user,
                    changed,
                )
            await session.flush()
            await session.refresh(user)
        return user

    async def delete_user(self, caller: Caller, user_id: str) -> None:
        async with self.database.transaction() as session:
            user = await self._visible_user(session, caller, user_id, lock=True)
            if user.role == Role.ADMIN.value and not user.disabled:
                await self._keep_an_admin(session, user)
            self._audit(session, caller.organization_id, caller.user_id, "auth.user.deleted", user)
            await session.delete(user)

    async def _keep_an_admin(self, session: AsyncSession, leaving: User) -> None:
        admins = await repository.lock_active_admins(session, leaving.organization_id)
        if all(admin.id == leaving.id for admin in admins):
            raise FailedPrecondition(
                "the organization's last admin cannot be demoted, disabled or deleted",
                metadata={"rule": "last_admin"},
            )

    # --- audit ----------------------------------------------------------------------------

    def _audit(
        self,
        session: AsyncSession,
        organization_id: str,
        actor_user_id: str,
        action: str,
        target: User | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            AuditEvent(
                event_id=str(uuid.uuid4()),
                organization_id=organization_id,
                actor_user_id=actor_user_id,
                action=action,
                target=f"users/{target.id}" if target is not None else "",
                service="auth",
                client_address=current_client_address.get(),
                details=details or {},
                event_time=now(),
            )
        )

    async def list_audit_events(
        self, caller: Caller, action_prefix: str, before: tuple[datetime, str] | None, limit: int
    ) -> Sequence[AuditEvent]:
        async with self.database.sessions() as session:
            return await repository.list_audit_events(
                session,
                caller.organization_id,
                action_prefix=action_prefix,
                before=before,
                limit=limit,
            )

    async def store_audit_event(self, event: AuditEvent) -> None:
        """Stores an audit event another service published; a redelivery stores nothing."""
        async with self.database.transaction() as session:
            await repository.insert_audit_event_once(session, event)
