"""Access-token verification, done locally in every service against auth's JWKS."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.kernel.context import Caller, Role
from services.kernel.errors import Unauthenticated

ACCESS_TOKEN_TYPE = "at+jwt"
ALGORITHMS = ["EdDSA"]  # the allowlist: "none", HS256 and friends are refused
REQUIRED_CLAIMS = ["iss", "aud", "sub", "org", "role", "iat", "exp", "jti"]

log = logging.getLogger(__name__)

# Fetches the current JWKS document ({"keys": [...]}) as a mapping.
JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


class KeySet:
    """Caches public keys by kid; refetches on an unknown kid (at most once per
    `min_refetch_seconds`) and every `max_age_seconds`, so a key withdrawn from the JWKS
    stops being trusted."""

    def __init__(
        self, fetch: JwksFetcher, min_refetch_seconds: float = 5.0, max_age_seconds: float = 300.0
    ) -> None:
        self._fetch = fetch
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._last_fetch = float("-inf")
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age_seconds
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Ed25519PublicKey | None:
        if kid not in self._keys or time.monotonic() - self._last_fetch > self._max_age:
            await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last_fetch < self._min_refetch:
                return
            self._last_fetch = time.monotonic()
            try:
                document = await self._fetch()
            except Exception:
                log.warning("could not fetch the JWKS; keeping cached keys", exc_info=True)
                return
            self._keys = parse_jwks(document)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in document.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("kid"):
            key = jwt.PyJWK.from_json(json.dumps(jwk), algorithm="EdDSA").key
            if isinstance(key, Ed25519PublicKey):
                keys[str(jwk["kid"])] = key
    return keys


class TokenVerifier:
    def __init__(self, keys: KeySet, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience

    async def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed access token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated("access token algorithm not allowed")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise Unauthenticated("not an access token")
        key = await self._keys.key(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("access token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
            role = Role(claims["role"])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("access token expired") from exc
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthenticated("invalid access token") from exc
        return Caller(
            user_id=str(claims["sub"]),
            organization_id=str(claims["org"]),
            role=role,
            token_id=str(claims["jti"]),
            issued_at=float(claims["iat"]),
        )
