"""The database: an async SQLAlchemy engine on psycopg 3, built from config at startup.

Repositories query and add through a session; they never commit. The unit of work (the RPC
handler or the event consumer) opens a transaction with `database.transaction()` and commits once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from services.kernel.errors import Aborted, DomainError, Unavailable

# SQLSTATEs meaning "a concurrent transaction won; the same request may succeed if retried".
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def sqlalchemy_url(database_url: str) -> str:
    """postgresql://… (what people and libpq write) → SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


class Database:
    def __init__(self, database_url: str, *, schema: str, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(database_url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=5,
            connect_args={"connect_timeout": 3, "application_name": f"energymesh-{schema}"},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


def database_error(error: BaseException) -> DomainError | None:
    """The client-facing form of a database failure that is not a bug: a lost race is
    ABORTED (retry the read-modify-write), an unreachable database is UNAVAILABLE."""
    if isinstance(error, exc.DBAPIError):
        if getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return Aborted("a concurrent change won; retry")
        if error.connection_invalidated or isinstance(error, exc.OperationalError):
            return Unavailable("the database is unavailable; retry later")
    if isinstance(error, exc.TimeoutError):  # no pooled connection came free in time
        return Unavailable("the database is busy; retry later")
    return None
