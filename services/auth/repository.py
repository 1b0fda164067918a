"""Queries for the auth service's tables. Functions add and query; they never commit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import AuditEvent, LoginAttempt, OneTimeToken, RefreshToken, User


async def lock_key(session: AsyncSession, name: str) -> None:
    """A transaction-scoped advisory lock on an arbitrary name."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


async def mark_attempt_succeeded(session: AsyncSession, attempt_id: str) -> None:
    await session.execute(
        update(LoginAttempt).where(LoginAttempt.id == attempt_id).values(succeeded=True)
    )


async def user_by_id(session: AsyncSession, user_id: str, *, lock: bool = False) -> User | None:
    query = select(User).where(User.id == user_id)
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def user_by_email(session: AsyncSession, email_key: str) -> User | None:
    return await session.scalar(select(User).where(User.email_key == email_key))


async def lock_active_admins(session: AsyncSession, organization_id: str) -> list[User]:
    """The organization's enabled admins, locked so concurrent demotions serialise."""
    query = (
        select(User)
        .where(
            User.organization_id == organization_id, User.role == "admin", User.disabled.is_(False)
        )
        .order_by(User.id)
        .with_for_update()
    )
    return list((await session.scalars(query)).all())


async def list_users(
    session: AsyncSession,
    organization_id: str,
    *,
    role: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[User]:
    query = select(User).where(User.organization_id == organization_id)
    if role:
        query = query.where(User.role == role)
    if after is not None:
        query = query.where(tuple_(User.create_time, User.id) > tuple_(*after))
    query = query.order_by(User.create_time, User.id).limit(limit)
    return list((await session.scalars(query)).all())


async def refresh_token_by_hash(session: AsyncSession, hashed: str) -> RefreshToken | None:
    return await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hashed).with_for_update()
    )


async def revoke_family(session: AsyncSession, family_id: str, now: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoke_time.is_(None))
        .values(revoke_time=now)
    )


async def revoke_user_sessions(session: AsyncSession, user_id: str, now: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoke_time.is_(None))
        .values(revoke_time=now)
    )


async def one_time_token(session: AsyncSession, hashed: str, purpose: str) -> OneTimeToken | None:
    return await session.scalar(
        select(OneTimeToken)
        .where(OneTimeToken.token_hash == hashed, OneTimeToken.purpose == purpose)
        .with_for_update()
    )


async def issued_since(session: AsyncSession, user_id: str, purpose: str, since: datetime) -> bool:
    """Whether a token for this purpose was issued to the user after `since`."""
    found = await session.scalar(
        select(OneTimeToken.id)
        .where(
            OneTimeToken.user_id == user_id,
            OneTimeToken.purpose == purpose,
            OneTimeToken.create_time > since,
        )
        .limit(1)
    )
    return found is not None


async def spend_one_time_tokens(
    session: AsyncSession, user_id: str, purpose: str, now: datetime
) -> None:
    await session.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.user_id == user_id,
            OneTimeToken.purpose == purpose,
            OneTimeToken.use_time.is_(None),
        )
        .values(use_time=now)
    )


async def recent_failures(
    session: AsyncSession,
    *,
    email_key: str | None = None,
    address: str | None = None,
    since: datetime,
) -> tuple[int, datetime | None]:
    """Failed logins since `since` for an account (after its last success) or an address:
    how many, and when the oldest of them happened."""
    where = [LoginAttempt.attempt_time > since]
    if email_key is not None:
        where.append(LoginAttempt.email_key == email_key)
        last_success = (
            select(func.max(LoginAttempt.attempt_time))
            .where(LoginAttempt.email_key == email_key, LoginAttempt.succeeded.is_(True))
            .scalar_subquery()
        )
        where.append(LoginAttempt.attempt_time > func.coalesce(last_success, since))
    if address is not None:
        where.append(LoginAttempt.client_address == address)
    row = (
        await session.execute(
            select(func.count(), func.min(LoginAttempt.attempt_time)).where(
                LoginAttempt.succeeded.is_(False), *where
            )
        )
    ).one()
    return int(row[0]), row[1]


async def list_audit_events(
    session: AsyncSession,
    organization_id: str,
    *,
    action_prefix: str,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.organization_id == organization_id)
    if action_prefix:
        escaped = action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(AuditEvent.action.like(f"{escaped}%", escape="\\"))
    if before is not None:
        query = query.where(tuple_(AuditEvent.event_time, AuditEvent.event_id) < tuple_(*before))
    query = query.order_by(AuditEvent.event_time.desc(), AuditEvent.event_id.desc()).limit(limit)
    return list((await session.scalars(query)).all())


async def insert_audit_event_once(session: AsyncSession, event: AuditEvent) -> None:
    values = {column.key: getattr(event, column.key) for column in AuditEvent.__table__.columns}
    await session.execute(insert(AuditEvent).values(**values).on_conflict_do_nothing())
