"""Login throttling, per account and per client address, as Envoy reports the address."""

from __future__ import annotations

import httpx

from services.launcher.mesh import Mesh
from tests.e2e.conftest import gateway_client
from tests.e2e.helpers import login, register, unique_email


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in response.json()["details"])


async def test_five_failures_lock_the_account_but_not_others(http: httpx.AsyncClient) -> None:
    victim, bystander = await register(http), await register(http)
    for _ in range(5):
        assert (await login(http, victim.email, "wrong password!")).status_code == 401
    assert_throttled(await login(http, victim.email))  # even with the right password
    assert (await login(http, bystander.email)).status_code == 200


async def test_twenty_failures_from_one_address_block_it(mesh: Mesh) -> None:
    async with (
        gateway_client(mesh, "127.0.77.1") as attacker,
        gateway_client(mesh, "127.0.77.2") as other,
    ):
        account = await register(other)
        for _ in range(20):
            assert (await login(attacker, unique_email(), "wrong password!")).status_code == 401
        assert_throttled(await login(attacker, account.email))
        assert (await login(other, account.email)).status_code == 200
