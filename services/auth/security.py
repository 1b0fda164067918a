"""Cryptography for auth: Argon2id passwords, hashed opaque tokens, Ed25519 signing keys
and access-token issuance."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel.context import Role
from services.kernel.tokens import ACCESS_TOKEN_TYPE

# OWASP's minimum for Argon2id: m=19 MiB, t=2, p=1.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the account does not exist, so timing does not reveal that.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    # Argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Opaque tokens are stored as SHA-256: they are random, so no salt or stretching needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class GeneratedKey:
    kid: str
    encrypted_pem: bytes
    public_jwk: dict[str, Any]


def generate_signing_key(secret: str) -> GeneratedKey:
    private = Ed25519PrivateKey.generate()
    public_raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    kid = _b64url(hashlib.sha256(public_raw).digest()[:12])
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret.encode()),
    )
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(public_raw),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }
    return GeneratedKey(kid=kid, encrypted_pem=pem, public_jwk=jwk)


def load_private_key(encrypted_pem: bytes, secret: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(encrypted_pem, password=secret.encode())
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError("signing key is not Ed25519")
    return key


@dataclass(frozen=True)
class AccessTokenIssuer:
    issuer: str
    audience: str
    ttl_seconds: int

    def issue(
        self, *, kid: str, key: Ed25519PrivateKey, user_id: str, organization_id: str, role: Role
    ) -> str:
        # Fractional iat, so a token issued just before a password reset in the same second
        # is told apart from one issued just after it.
        now = math.floor(time.time() * 1000) / 1000
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "org": organization_id,
            "role": role.value,
            "iat": now,
            "exp": int(now) + self.ttl_seconds,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE}
        )
