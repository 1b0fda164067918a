"""Password reset and email verification, with the tokens taken from NATS as the
notification service will take them."""

from __future__ import annotations

import httpx
from nats.aio.client import Client

from tests.e2e.helpers import PASSWORD, login, next_event, register, unique_email, violations

NEW_PASSWORD = "a brand new passphrase"


async def test_password_reset_flow(http: httpx.AsyncClient, nats_client: Client) -> None:
    account = await register(http)
    other_session = (await login(http, account.email)).json()

    requested = await http.post("/v1/auth:requestPasswordReset", json={"email": account.email})
    assert requested.status_code == 200
    event = await next_event(
        nats_client, "auth.password_reset.requested", {"userId": account.user_id}
    )
    assert event["email"] == account.email
    assert not event.get("invitation")

    short = await http.post(
        "/v1/auth:resetPassword", json={"token": event["token"], "newPassword": "short"}
    )
    assert short.status_code == 400
    assert "new_password" in violations(short)

    reset = await http.post(
        "/v1/auth:resetPassword", json={"token": event["token"], "newPassword": NEW_PASSWORD}
    )
    assert reset.status_code == 200, reset.text

    # Single use; every session of the user is revoked; old access tokens stop working.
    again = await http.post(
        "/v1/auth:resetPassword", json={"token": event["token"], "newPassword": NEW_PASSWORD}
    )
    assert again.status_code == 400
    for refresh in (account.refresh_token, other_session["refreshToken"]):
        assert (
            await http.post("/v1/auth:refresh", json={"refreshToken": refresh})
        ).status_code == 401
    assert (await http.get("/v1/users/me", headers=account.headers)).status_code == 401

    assert (await login(http, account.email, PASSWORD)).status_code == 401
    assert (await login(http, account.email, NEW_PASSWORD)).status_code == 200


async def test_reset_request_never_reveals_accounts(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/v1/auth:requestPasswordReset", json={"email": unique_email()})
    assert unknown.status_code == 200
    assert unknown.json() == {}


async def test_bogus_reset_token_is_rejected(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/auth:resetPassword", json={"token": "bogus", "newPassword": NEW_PASSWORD}
    )
    assert response.status_code == 400
    assert "token" in violations(response)


async def test_email_verification(http: httpx.AsyncClient, nats_client: Client) -> None:
    account = await register(http)
    event = await next_event(
        nats_client, "auth.email_verification.requested", {"userId": account.user_id}
    )
    verified = await http.post("/v1/auth:verifyEmail", json={"token": event["token"]})
    assert verified.status_code == 200, verified.text
    me = await http.get("/v1/users/me", headers=account.headers)
    assert me.json()["emailVerified"] is True
    again = await http.post("/v1/auth:verifyEmail", json={"token": event["token"]})
    assert again.status_code == 400


async def test_invited_user_chooses_a_password(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http)
    email = unique_email("invitee")
    created = await http.post(
        "/v1/users",
        headers=admin.headers,
        json={"user": {"email": email, "displayName": "Invitee", "role": "ROLE_OPERATOR"}},
    )
    assert created.status_code == 200, created.text
    user_id = created.json()["userId"]
    assert (await login(http, email, PASSWORD)).status_code == 401  # no password yet
    event = await next_event(nats_client, "auth.password_reset.requested", {"userId": user_id})
    assert event["invitation"] is True
    chosen = await http.post(
        "/v1/auth:resetPassword", json={"token": event["token"], "newPassword": PASSWORD}
    )
    assert chosen.status_code == 200
    assert (await login(http, email, PASSWORD)).status_code == 200


async def test_reset_requests_are_rate_limited_per_account(http: httpx.AsyncClient) -> None:
    account = await register(http)
    for _ in range(3):
        response = await http.post("/v1/auth:requestPasswordReset", json={"email": account.email})
        assert response.status_code == 200
    audit = await http.get(
        "/v1/audit-events?action_prefix=auth.password_reset", headers=account.headers
    )
    assert len(audit.json()["auditEvents"]) == 1
