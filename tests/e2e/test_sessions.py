"""Registration, sign-in, refresh rotation with reuse detection, and sign-out, over REST."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import PASSWORD, error_reason, login, register, unique_email, violations


async def test_register_login_me_refresh_reuse_logout(http: httpx.AsyncClient) -> None:
    account = await register(http)

    me = await http.get("/v1/users/me", headers=account.headers)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == account.email
    assert me.json()["role"] == "ROLE_ADMIN"
    assert me.json()["emailVerified"] is False

    signed_in = await login(http, account.email.upper())  # emails are case-insensitive
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    assert tokens["tokenType"] == "Bearer"
    assert tokens["expiresIn"] == 900

    first = await http.post("/v1/auth:refresh", json={"refreshToken": tokens["refreshToken"]})
    assert first.status_code == 200, first.text
    rotated = first.json()
    assert rotated["refreshToken"] != tokens["refreshToken"]
    assert (
        await http.get(
            "/v1/users/me", headers={"Authorization": f"Bearer {rotated['accessToken']}"}
        )
    ).status_code == 200

    # The spent token comes back: the whole family is revoked, the newest token included.
    reused = await http.post("/v1/auth:refresh", json={"refreshToken": tokens["refreshToken"]})
    assert reused.status_code == 401
    assert error_reason(reused) == "ERROR_REASON_UNAUTHENTICATED"
    after = await http.post("/v1/auth:refresh", json={"refreshToken": rotated["refreshToken"]})
    assert after.status_code == 401

    # Other sessions of the same user are unaffected; logout ends one.
    other = (await login(http, account.email)).json()
    assert (
        await http.post("/v1/auth:logout", json={"refreshToken": other["refreshToken"]})
    ).status_code == 200
    gone = await http.post("/v1/auth:refresh", json={"refreshToken": other["refreshToken"]})
    assert gone.status_code == 401
    still = await http.post("/v1/auth:refresh", json={"refreshToken": account.refresh_token})
    assert still.status_code == 200


async def test_duplicate_email_is_already_exists(http: httpx.AsyncClient) -> None:
    account = await register(http)
    again = await http.post(
        "/v1/auth:register",
        json={
            "email": account.email.upper(),
            "password": PASSWORD,
            "displayName": "Twin",
            "organizationName": "Twin Org",
        },
    )
    assert again.status_code == 409
    assert error_reason(again) == "ERROR_REASON_ALREADY_EXISTS"


async def test_register_reports_every_bad_field(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/auth:register",
        json={
            "email": "not-an-email",
            "password": "short",
            "displayName": "",
            "organizationName": "x" * 201,
        },
    )
    assert response.status_code == 400
    assert set(violations(response)) == {"email", "password", "display_name", "organization_name"}
    # Nothing half-written: the address is still free.
    ok = await http.post(
        "/v1/auth:register",
        json={
            "email": unique_email(),
            "password": PASSWORD,
            "displayName": "A",
            "organizationName": "B",
        },
    )
    assert ok.status_code == 200


async def test_bad_bodies_are_400(http: httpx.AsyncClient) -> None:
    malformed = await http.post(
        "/v1/auth:login", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    wrong_type = await http.post("/v1/auth:login", json={"email": ["a"], "password": 5})
    assert wrong_type.status_code == 400
    missing = await http.post("/v1/auth:login", json={})
    assert missing.status_code == 400
    assert set(violations(missing)) == {"email", "password"}
    oversized = await http.post(
        "/v1/auth:register",
        json={
            "email": unique_email(),
            "password": "p" * 300,
            "displayName": "A",
            "organizationName": "B",
        },
    )
    assert oversized.status_code == 400
    assert "password" in violations(oversized)
    for path in ("/v1/auth:refresh", "/v1/auth:logout"):
        empty = await http.post(path, json={})
        assert empty.status_code == 400
        assert "refresh_token" in violations(empty)
    assert (await http.post("/v1/auth:refresh", json={"refreshToken": "forged"})).status_code == 401


async def test_wrong_password_and_unknown_account_look_the_same(http: httpx.AsyncClient) -> None:
    account = await register(http)
    wrong = await login(http, account.email, "not the password")
    unknown = await login(http, unique_email(), "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["message"] == unknown.json()["message"]
