"""User administration: roles, the last-admin rule, disabled users, tenancy, pagination."""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.helpers import add_user, error_reason, login, register, unique_email, violations


async def test_admin_changes_roles_and_the_new_role_applies(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    assert (await http.get("/v1/users", headers=viewer.headers)).status_code == 403

    promoted = await http.patch(
        f"/v1/users/{viewer.user_id}?update_mask=role",
        headers=admin.headers,
        json={"role": "ROLE_ADMIN"},
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "ROLE_ADMIN"
    # The old token carried the old role: auth refuses it; a fresh one has the new role.
    assert (await http.get("/v1/users", headers=viewer.headers)).status_code == 401
    fresh = (
        await http.post("/v1/auth:refresh", json={"refreshToken": viewer.refresh_token})
    ).json()
    listed = await http.get(
        "/v1/users", headers={"Authorization": f"Bearer {fresh['accessToken']}"}
    )
    assert listed.status_code == 200


async def test_last_admin_cannot_be_demoted_disabled_or_deleted(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    path = f"/v1/users/{admin.user_id}"
    demote = await http.patch(
        path + "?update_mask=role", headers=admin.headers, json={"role": "ROLE_VIEWER"}
    )
    assert demote.status_code == 400  # FAILED_PRECONDITION, as Envoy maps it
    assert error_reason(demote) == "ERROR_REASON_FAILED_PRECONDITION"
    disable = await http.patch(
        path + "?update_mask=disabled", headers=admin.headers, json={"disabled": True}
    )
    assert error_reason(disable) == "ERROR_REASON_FAILED_PRECONDITION"
    delete = await http.delete(path, headers=admin.headers)
    assert error_reason(delete) == "ERROR_REASON_FAILED_PRECONDITION"

    # With a second admin, the first may step down.
    second = await add_user(http, admin, "ROLE_ADMIN")
    stepped_down = await http.patch(
        path + "?update_mask=role", headers=second.headers, json={"role": "ROLE_MANAGER"}
    )
    assert stepped_down.status_code == 200, stepped_down.text
    last = await http.delete(f"/v1/users/{second.user_id}", headers=second.headers)
    assert error_reason(last) == "ERROR_REASON_FAILED_PRECONDITION"


async def test_disabled_user_cannot_sign_in_or_refresh(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    operator = await add_user(http, admin, "ROLE_OPERATOR")
    disabled = await http.patch(
        f"/v1/users/{operator.user_id}?update_mask=disabled",
        headers=admin.headers,
        json={"disabled": True},
    )
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    assert (await login(http, operator.email)).status_code == 401
    assert (
        await http.post("/v1/auth:refresh", json={"refreshToken": operator.refresh_token})
    ).status_code == 401
    assert (await http.get("/v1/users/me", headers=operator.headers)).status_code == 401

    enabled = await http.patch(
        f"/v1/users/{operator.user_id}?update_mask=disabled",
        headers=admin.headers,
        json={"disabled": False},
    )
    assert enabled.status_code == 200
    assert (await login(http, operator.email)).status_code == 200


async def test_deleted_users_token_is_refused(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    manager = await add_user(http, admin, "ROLE_MANAGER")
    assert (
        await http.delete(f"/v1/users/{manager.user_id}", headers=admin.headers)
    ).status_code == 200
    assert (await http.get("/v1/users/me", headers=manager.headers)).status_code == 401
    assert (
        await http.get(f"/v1/users/{manager.user_id}", headers=admin.headers)
    ).status_code == 404
    assert (await login(http, manager.email)).status_code == 401


async def test_other_organizations_users_are_not_found(http: httpx.AsyncClient) -> None:
    ours, theirs = await register(http, "Ours"), await register(http, "Theirs")
    their_user = await add_user(http, theirs, "ROLE_VIEWER")
    for target in (theirs.user_id, their_user.user_id):
        path = f"/v1/users/{target}"
        assert (await http.get(path, headers=ours.headers)).status_code == 404
        patched = await http.patch(
            path + "?update_mask=display_name", headers=ours.headers, json={"displayName": "x"}
        )
        assert patched.status_code == 404
        assert (await http.delete(path, headers=ours.headers)).status_code == 404
    # A user id that exists nowhere looks the same as another organization's.
    assert (await http.get(f"/v1/users/{uuid.uuid4()}", headers=ours.headers)).status_code == 404
    listed = (await http.get("/v1/users", headers=ours.headers)).json()
    assert {u["userId"] for u in listed["users"]} == {ours.user_id}
    audit = (await http.get("/v1/audit-events", headers=ours.headers)).json()
    assert {e["organizationId"] for e in audit["auditEvents"]} == {ours.organization_id}


async def test_viewers_read_only_themselves(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    viewer = await add_user(http, admin, "ROLE_VIEWER")
    operator = await add_user(http, admin, "ROLE_OPERATOR")
    assert (await http.get(f"/v1/users/{admin.user_id}", headers=viewer.headers)).status_code == 403
    assert (
        await http.get(f"/v1/users/{admin.user_id}", headers=operator.headers)
    ).status_code == 200
    renamed = await http.patch(
        f"/v1/users/{viewer.user_id}?update_mask=display_name",
        headers=viewer.headers,
        json={"displayName": "Vee"},
    )
    assert renamed.status_code == 200
    assert renamed.json()["displayName"] == "Vee"
    escalate = await http.patch(
        f"/v1/users/{viewer.user_id}?update_mask=role",
        headers=viewer.headers,
        json={"role": "ROLE_ADMIN"},
    )
    assert escalate.status_code == 403


async def test_user_input_is_validated(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    bad = await http.post(
        "/v1/users",
        headers=admin.headers,
        json={"user": {"email": "nope", "displayName": ""}, "password": "short"},
    )
    assert bad.status_code == 400
    assert set(violations(bad)) == {"user.email", "user.display_name", "user.role", "password"}
    taken = await http.post(
        "/v1/users",
        headers=admin.headers,
        json={"user": {"email": admin.email, "displayName": "Dup", "role": "ROLE_VIEWER"}},
    )
    assert taken.status_code == 409
    mask = await http.patch(
        f"/v1/users/{admin.user_id}?update_mask=email",
        headers=admin.headers,
        json={"email": unique_email()},
    )
    assert mask.status_code == 400
    assert "update_mask" in violations(mask)
    malformed_id = await http.get("/v1/users/not-a-uuid", headers=admin.headers)
    assert malformed_id.status_code == 400
    assert (await http.get("/v1/users?page_size=-1", headers=admin.headers)).status_code == 400
    assert (
        await http.get("/v1/users?page_token=garbage", headers=admin.headers)
    ).status_code == 400


async def test_users_are_paginated_and_filtered_by_role(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    created = {admin.user_id}
    for role in ("ROLE_VIEWER", "ROLE_VIEWER", "ROLE_OPERATOR", "ROLE_VIEWER", "ROLE_MANAGER"):
        response = await http.post(
            "/v1/users",
            headers=admin.headers,
            json={"user": {"email": unique_email(), "displayName": "P", "role": role}},
        )
        created.add(response.json()["userId"])
    seen: list[str] = []
    token = ""
    while True:
        page = (
            await http.get(f"/v1/users?page_size=2&page_token={token}", headers=admin.headers)
        ).json()
        assert len(page["users"]) <= 2
        seen += [u["userId"] for u in page["users"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert sorted(seen) == sorted(created)
    viewers = (await http.get("/v1/users?role=ROLE_VIEWER", headers=admin.headers)).json()["users"]
    assert len(viewers) == 3
    assert {u["role"] for u in viewers} == {"ROLE_VIEWER"}
    # A page token cannot be replayed with other filters.
    first = (await http.get("/v1/users?page_size=1", headers=admin.headers)).json()
    replay = await http.get(
        f"/v1/users?page_size=1&role=ROLE_VIEWER&page_token={first['nextPageToken']}",
        headers=admin.headers,
    )
    assert replay.status_code == 400


async def test_audit_trail_records_logins_and_changes(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    await login(http, admin.email, "wrong password!")
    await login(http, admin.email)
    operator = await add_user(http, admin, "ROLE_OPERATOR")
    await http.patch(
        f"/v1/users/{operator.user_id}?update_mask=role",
        headers=admin.headers,
        json={"role": "ROLE_MANAGER"},
    )
    events = (await http.get("/v1/audit-events?page_size=100", headers=admin.headers)).json()[
        "auditEvents"
    ]
    actions = [e["action"] for e in events]
    for expected in (
        "auth.user.registered",
        "auth.login.failed",
        "auth.login.succeeded",
        "auth.user.created",
        "auth.user.updated",
    ):
        assert expected in actions
    times = [e["eventTime"] for e in events]
    assert times == sorted(times, reverse=True)
    only_logins = (
        await http.get("/v1/audit-events?action_prefix=auth.login", headers=admin.headers)
    ).json()
    assert {e["action"] for e in only_logins["auditEvents"]} == {
        "auth.login.failed",
        "auth.login.succeeded",
    }
    updated = next(e for e in events if e["action"] == "auth.user.updated")
    assert updated["details"]["role"] == {"from": "operator", "to": "manager"}
    manager = await add_user(http, admin, "ROLE_MANAGER")
    assert (await http.get("/v1/audit-events", headers=manager.headers)).status_code == 403
