"""Signing keys: persisted (encrypted) in the database, rotated on a schedule; a retired key
stays in the JWKS until the last token it signed has expired."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import or_, select, text

from services.auth.models import SigningKey
from services.auth.security import generate_signing_key, load_private_key
from services.kernel.database import Database

log = logging.getLogger(__name__)

# Serialises key creation across auth replicas.
_KEY_LOCK_ID = 0x656E_6B65_7973  # "enkeys"


@dataclass(frozen=True)
class ActiveKey:
    kid: str
    private_key: Ed25519PrivateKey
    create_time: datetime
    loaded_at: float


# How long a replica signs with its cached key before checking whether another replica rotated.
RELOAD_SECONDS = 60.0


class Keyring:
    def __init__(
        self, database: Database, secret: str, rotation: timedelta, token_ttl: timedelta
    ) -> None:
        self._database = database
        self._secret = secret
        self._rotation = rotation
        self._token_ttl = token_ttl
        self._active: ActiveKey | None = None

    async def active(self) -> ActiveKey:
        """The key that signs new tokens, rotated once it is older than the rotation period."""
        key = self._active
        if (
            key is None
            or datetime.now(UTC) - key.create_time >= self._rotation
            or time.monotonic() - key.loaded_at >= RELOAD_SECONDS
        ):
            key = await self._load_or_rotate()
            self._active = key
        return key

    async def rotate(self) -> ActiveKey:
        """Retire the current key now and start signing with a new one."""
        async with self._database.transaction() as session:
            await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _KEY_LOCK_ID})
            await self._retire_signing_keys(session)
        self._active = None
        return await self.active()

    async def _retire_signing_keys(self, session: Any) -> None:
        for key in (
            await session.scalars(select(SigningKey).where(SigningKey.retire_time.is_(None)))
        ).all():
            key.retire_time = datetime.now(UTC)

    async def _load_or_rotate(self) -> ActiveKey:
        async with self._database.transaction() as session:
            await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _KEY_LOCK_ID})
            current = await session.scalar(
                select(SigningKey)
                .where(SigningKey.retire_time.is_(None))
                .order_by(SigningKey.create_time.desc())
                .limit(1)
            )
            now = datetime.now(UTC)
            if current is None or now - current.create_time >= self._rotation:
                await self._retire_signing_keys(session)
                generated = await asyncio.to_thread(generate_signing_key, self._secret)
                current = SigningKey(
                    kid=generated.kid,
                    private_key_pem=generated.encrypted_pem,
                    public_jwk=generated.public_jwk,
                    create_time=now,
                )
                session.add(current)
                log.info("new signing key", extra={"kid": generated.kid})
            private = await asyncio.to_thread(
                load_private_key, current.private_key_pem, self._secret
            )
            return ActiveKey(current.kid, private, current.create_time, time.monotonic())

    async def jwks(self) -> Mapping[str, Any]:
        """Public keys of the active key and of retired keys whose tokens may still be valid."""
        await self.active()
        cutoff = datetime.now(UTC) - self._token_ttl - timedelta(minutes=1)
        async with self._database.sessions() as session:
            keys = await session.scalars(
                select(SigningKey)
                .where(or_(SigningKey.retire_time.is_(None), SigningKey.retire_time > cutoff))
                .order_by(SigningKey.create_time.desc())
            )
            return {"keys": [dict(key.public_jwk) for key in keys]}
