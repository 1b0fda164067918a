"""Shared steps for end-to-end tests: people, organizations and their tokens."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

PASSWORD = "correct horse battery staple"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@dataclass
class Account:
    user_id: str
    organization_id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


async def register(http: httpx.AsyncClient, organization: str = "Acme Energy") -> Account:
    email = unique_email("admin")
    response = await http.post(
        "/v1/auth:register",
        json={
            "email": email,
            "password": PASSWORD,
            "displayName": "Ada Admin",
            "organizationName": organization,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return Account(
        user_id=body["user"]["userId"],
        organization_id=body["user"]["organizationId"],
        email=email,
        password=PASSWORD,
        access_token=body["accessToken"],
        refresh_token=body["refreshToken"],
    )


async def login(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await http.post("/v1/auth:login", json={"email": email, "password": password})


async def add_user(http: httpx.AsyncClient, admin: Account, role: str) -> Account:
    """An admin creates a user with a password, who then signs in."""
    email = unique_email(role.lower())
    response = await http.post(
        "/v1/users",
        headers=admin.headers,
        json={
            "user": {"email": email, "displayName": f"A {role}", "role": role},
            "password": PASSWORD,
        },
    )
    assert response.status_code == 200, response.text
    user = response.json()
    signed_in = await login(http, email)
    assert signed_in.status_code == 200, signed_in.text
    tokens = signed_in.json()
    return Account(
        user_id=user["userId"],
        organization_id=user["organizationId"],
        email=email,
        password=PASSWORD,
        access_token=tokens["accessToken"],
        refresh_token=tokens["refreshToken"],
    )


def violations(response: httpx.Response) -> dict[str, str]:
    """field → description of a google.rpc.BadRequest in a JSON error body."""
    found: dict[str, str] = {}
    for detail in response.json().get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            for violation in detail.get("fieldViolations", []):
                found[violation["field"]] = violation["description"]
    return found


def error_reason(response: httpx.Response) -> str:
    for detail in response.json().get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


async def find_event(
    nats_client: Client,
    subject: str,
    predicate: Callable[[dict[str, Any]], bool],
    wait_seconds: float = 15,
) -> dict[str, Any]:
    """The first event on a JetStream subject (from the stream's start) matching predicate."""
    js = nats_client.jetstream()
    subscription = await js.subscribe(
        subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        async with asyncio.timeout(wait_seconds):
            while True:
                message = await subscription.next_msg(timeout=wait_seconds)
                payload: dict[str, Any] = json.loads(message.data)
                if predicate(payload):
                    return payload
    finally:
        await subscription.unsubscribe()


async def next_event(
    nats_client: Client, subject: str, match: dict[str, Any], wait_seconds: float = 15
) -> dict[str, Any]:
    """The first event on a JetStream subject whose JSON payload contains `match`."""

    def matches(payload: dict[str, Any]) -> bool:
        return all(payload.get(key) == value for key, value in match.items())

    return await find_event(nats_client, subject, matches, wait_seconds)


async def eventually(check: Callable[[], Awaitable[bool]], wait_seconds: float = 20) -> None:
    """Polls a condition of another process until it holds (events arrive asynchronously)."""
    async with asyncio.timeout(wait_seconds):
        while not await check():  # noqa: ASYNC110 - nothing local to wait on
            await asyncio.sleep(0.1)
