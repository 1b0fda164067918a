"""The kernel's access-token verifier, against keys it does not control."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel.context import Role
from services.kernel.errors import Unauthenticated
from services.kernel.tokens import KeySet, TokenVerifier

ISSUER, AUDIENCE = "energymesh", "energymesh"


def public_jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org": "org-1",
        "role": "operator",
        "iat": now,
        "exp": now + 900,
        "jti": "token-1",
    }
    base.update(overrides)
    return base


class Fixture:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.fetches = 0
        self.jwks: dict[str, Any] = {"keys": [public_jwk(self.key, "k1")]}
        self.verifier = TokenVerifier(KeySet(self.fetch, 0), ISSUER, AUDIENCE)

    async def fetch(self) -> Mapping[str, Any]:
        self.fetches += 1
        return self.jwks

    def sign(self, key: Ed25519PrivateKey | None = None, kid: str = "k1", **overrides: Any) -> str:
        return jwt.encode(
            claims(**overrides),
            key or self.key,
            algorithm="EdDSA",
            headers={"kid": kid, "typ": "at+jwt"},
        )


@pytest.fixture
def tokens() -> Fixture:
    return Fixture()


async def test_a_valid_token_yields_the_caller(tokens: Fixture) -> None:
    caller = await tokens.verifier.verify(tokens.sign())
    assert (caller.user_id, caller.organization_id, caller.role) == (
        "user-1",
        "org-1",
        Role.OPERATOR,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 10},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"role": "superuser"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "unknown-role"],
)
async def test_bad_claims_are_refused(tokens: Fixture, overrides: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(tokens.sign(**overrides))


async def test_a_missing_claim_is_refused(tokens: Fixture) -> None:
    token = jwt.encode(
        {k: v for k, v in claims().items() if k != "org"},
        tokens.key,
        algorithm="EdDSA",
        headers={"kid": "k1", "typ": "at+jwt"},
    )
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(token)


async def test_a_foreign_signature_is_refused(tokens: Fixture) -> None:
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(tokens.sign(key=Ed25519PrivateKey.generate()))


def unsigned(header: dict[str, str], body: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(body)}."


async def test_alg_none_is_refused(tokens: Fixture) -> None:
    token = unsigned({"alg": "none", "typ": "at+jwt", "kid": "k1"}, claims())
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(token)


async def test_hmac_with_the_public_key_is_refused(tokens: Fixture) -> None:
    secret = tokens.jwks["keys"][0]["x"]
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "k1", "typ": "at+jwt"})
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(token)


async def test_a_token_that_is_not_an_access_token_is_refused(tokens: Fixture) -> None:
    token = jwt.encode(claims(), tokens.key, algorithm="EdDSA", headers={"kid": "k1", "typ": "JWT"})
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify(token)


async def test_garbage_is_refused(tokens: Fixture) -> None:
    with pytest.raises(Unauthenticated):
        await tokens.verifier.verify("not-a-jwt")


async def test_an_unknown_kid_refetches_the_key_set(tokens: Fixture) -> None:
    await tokens.verifier.verify(tokens.sign())
    rotated = Ed25519PrivateKey.generate()
    tokens.jwks = {"keys": [public_jwk(tokens.key, "k1"), public_jwk(rotated, "k2")]}
    caller = await tokens.verifier.verify(tokens.sign(key=rotated, kid="k2"))
    assert caller.user_id == "user-1"
    assert tokens.fetches == 2
