"""Access tokens presented to the mesh: every way a token can be wrong is refused with 401.

To forge tokens signed with the real key (expired, wrong audience ...) the test reads the
active signing key the way auth stores it, encrypted with the development secret."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel.config import DEV_SECRET_DEFAULTS
from services.launcher.mesh import Mesh
from tests.e2e.helpers import Account, register


def signing_key(mesh: Mesh) -> tuple[str, Ed25519PrivateKey]:
    with psycopg.connect(mesh.database_url) as connection:
        kid, pem = connection.execute(
            "SELECT kid, private_key_pem FROM auth.signing_keys WHERE retire_time IS NULL "
            "ORDER BY create_time DESC LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    secret = DEV_SECRET_DEFAULTS["AUTH_KEY_ENCRYPTION_SECRET"].encode()
    key = serialization.load_pem_private_key(bytes(pem), password=secret)
    assert isinstance(key, Ed25519PrivateKey)
    return kid, key


def claims_for(account: Account, **overrides: Any) -> dict[str, Any]:
    now = round(time.time(), 3)
    claims = {
        "iss": "energymesh",
        "aud": "energymesh",
        "sub": account.user_id,
        "org": account.organization_id,
        "role": "admin",
        "iat": now,
        "exp": int(now) + 600,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return claims


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.fixture
async def account(http: httpx.AsyncClient) -> Account:
    return await register(http)


async def me(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})


async def test_a_token_minted_with_the_real_key_works(
    http: httpx.AsyncClient, mesh: Mesh, account: Account
) -> None:
    kid, key = signing_key(mesh)
    token = jwt.encode(
        claims_for(account), key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
    )
    assert (await me(http, token)).status_code == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 60, "iat": int(time.time()) - 1000},
        {"aud": "another-audience"},
        {"iss": "https://evil.example"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer"],
)
async def test_bad_claims_are_refused(
    http: httpx.AsyncClient, mesh: Mesh, account: Account, overrides: dict[str, Any]
) -> None:
    kid, key = signing_key(mesh)
    token = jwt.encode(
        claims_for(account, **overrides),
        key,
        algorithm="EdDSA",
        headers={"kid": kid, "typ": "at+jwt"},
    )
    response = await me(http, token)
    assert response.status_code == 401
    assert response.json()["code"] == 16


async def test_wrong_signature_is_refused(
    http: httpx.AsyncClient, mesh: Mesh, account: Account
) -> None:
    kid, _ = signing_key(mesh)
    forged = jwt.encode(
        claims_for(account),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": kid, "typ": "at+jwt"},
    )
    assert (await me(http, forged)).status_code == 401
    # Tampering with the payload of a genuine token breaks its signature too.
    header, _, signature = account.access_token.split(".")
    tampered = (
        f"{header}.{b64(claims_for(account, role='admin', org=str(uuid.uuid4())))}.{signature}"
    )
    assert (await me(http, tampered)).status_code == 401


async def test_alg_none_is_refused(http: httpx.AsyncClient, mesh: Mesh, account: Account) -> None:
    kid, _ = signing_key(mesh)
    token = f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{b64(claims_for(account))}."
    assert (await me(http, token)).status_code == 401


async def test_refresh_token_is_not_an_access_token(
    http: httpx.AsyncClient, account: Account
) -> None:
    assert (await me(http, account.refresh_token)).status_code == 401


async def test_missing_or_malformed_authorization(
    http: httpx.AsyncClient, account: Account
) -> None:
    assert (await http.get("/v1/users/me")).status_code == 401
    assert (
        await http.get("/v1/users/me", headers={"Authorization": account.access_token})
    ).status_code == 401
    assert (
        await http.get("/v1/users/me", headers={"Authorization": "Basic abc"})
    ).status_code == 401
    assert (await me(http, "a.b.c")).status_code == 401


async def test_jwks_is_published_at_both_paths(http: httpx.AsyncClient, mesh: Mesh) -> None:
    kid, _ = signing_key(mesh)
    for path in ("/v1/auth/jwks", "/.well-known/jwks.json"):
        response = await http.get(path)
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert kid in {k["kid"] for k in keys}
        assert all(
            k["kty"] == "OKP" and k["crv"] == "Ed25519" and k["alg"] == "EdDSA" for k in keys
        )
        assert all("d" not in k for k in keys)  # never the private part
