"""Signing-key rotation: a retired key stays in the JWKS, so tokens it signed keep working."""

from __future__ import annotations

from datetime import timedelta

import httpx

from services.auth.keys import Keyring
from services.kernel.config import DEV_SECRET_DEFAULTS
from services.kernel.database import Database
from services.launcher.mesh import Mesh
from tests.e2e.helpers import register


async def kids(http: httpx.AsyncClient) -> set[str]:
    response = await http.get("/.well-known/jwks.json")
    return {key["kid"] for key in response.json()["keys"]}


async def test_rotation_keeps_old_tokens_valid(http: httpx.AsyncClient, mesh: Mesh) -> None:
    account = await register(http)
    before = await kids(http)
    database = Database(mesh.database_url, schema="auth")
    try:
        keyring = Keyring(
            database,
            DEV_SECRET_DEFAULTS["AUTH_KEY_ENCRYPTION_SECRET"],
            rotation=timedelta(days=30),
            token_ttl=timedelta(minutes=15),
        )
        rotated = await keyring.rotate()
    finally:
        await database.dispose()
    after = await kids(http)
    assert rotated.kid not in before
    assert after >= before | {rotated.kid}
    assert (await http.get("/v1/users/me", headers=account.headers)).status_code == 200
