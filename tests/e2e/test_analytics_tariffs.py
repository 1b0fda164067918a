"""Tariffs, tariff assignments and emission factors over REST: the happy paths, updates with a
field mask and an etag, every kind of bad input, and other organizations' resources."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.analytics_steps import (
    assign_tariff,
    create_emission_factor,
    create_tariff,
    flat_version,
    unique_year,
)
from tests.e2e.device_steps import create_site
from tests.e2e.helpers import error_reason, register, violations

TOU_VERSION = {
    "effectiveFrom": "2026-01-01T00:00:00Z",
    "effectiveTo": "2026-07-01T00:00:00Z",
    "flatPrice": 0.25,
    "windows": [
        {"price": 0.40, "startMinute": 480, "endMinute": 1200, "dayTypes": ["DAY_TYPE_WEEKDAY"]},
        {"price": 0.10, "startMinute": 1320, "endMinute": 360, "months": [12, 1, 2]},
    ],
    "tiers": [],
    "standingChargePerDay": 0.5,
    "feedInPrice": 0.08,
    "holidays": ["2026-01-01", "2026-04-03"],
}


async def test_tariff_crud_with_field_mask_and_etag(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    created = await create_tariff(http, admin, [TOU_VERSION], name="  Day and night  ")
    tariff_id = created["tariffId"]
    assert created["name"] == "Day and night"
    assert created["currencyCode"] == "EUR"
    assert created["versions"][0]["windows"][1]["months"] == [12, 1, 2]
    assert created["versions"][0]["holidays"] == ["2026-01-01", "2026-04-03"]
    assert created["etag"]
    assert created["createTime"] == created["updateTime"]

    got = await http.get(f"/v1/tariffs/{tariff_id}", headers=admin.headers)
    assert got.status_code == 200, got.text
    assert got.json() == created

    # Rename with a mask: the versions stay, the etag changes.
    renamed = await http.patch(
        f"/v1/tariffs/{tariff_id}",
        params={"updateMask": "name"},
        headers=admin.headers,
        json={"name": "Day/night", "etag": created["etag"], "versions": []},
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Day/night"
    assert renamed.json()["versions"] == created["versions"]
    assert renamed.json()["etag"] != created["etag"]

    # The etag read before the rename is stale now: ABORTED (409), nothing changes.
    stale = await http.patch(
        f"/v1/tariffs/{tariff_id}",
        params={"updateMask": "name"},
        headers=admin.headers,
        json={"name": "Lost update", "etag": created["etag"]},
    )
    assert stale.status_code == 409, stale.text
    assert error_reason(stale) == "ERROR_REASON_ABORTED"

    # No mask: the fields the request sets (here the versions, appended to).
    later = flat_version(0.30, "2026-07-01T00:00:00Z")
    replaced = await http.patch(
        f"/v1/tariffs/{tariff_id}",
        headers=admin.headers,
        json={"versions": [later, TOU_VERSION]},
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["name"] == "Day/night"
    # Stored in time order.
    assert [v["effectiveFrom"] for v in body["versions"]] == [
        "2026-01-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
    ]

    # Listing by name, a page at a time.
    for name in ("Anytime", "Zonal"):
        await create_tariff(http, admin, [flat_version(0.2)], name=name)
    names: list[str] = []
    token = ""
    while True:
        page = await http.get(
            "/v1/tariffs", params={"pageSize": 2, "pageToken": token}, headers=admin.headers
        )
        assert page.status_code == 200, page.text
        names.extend(t["name"] for t in page.json()["tariffs"])
        token = page.json()["nextPageToken"]
        if not token:
            break
    assert names == ["Anytime", "Day/night", "Zonal"]

    deleted = await http.delete(f"/v1/tariffs/{tariff_id}", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text
    assert (await http.get(f"/v1/tariffs/{tariff_id}", headers=admin.headers)).status_code == 404
    again = await http.delete(f"/v1/tariffs/{tariff_id}", headers=admin.headers)
    assert again.status_code == 404


def bad_tariffs() -> list[tuple[dict[str, Any], set[str]]]:
    """Tariff bodies and the field violations each must report."""
    version = dict(TOU_VERSION)
    return [
        ({"currencyCode": "EUR", "versions": [version]}, {"tariff.name"}),
        ({"name": "x" * 201, "currencyCode": "EUR", "versions": [version]}, {"tariff.name"}),
        ({"name": "T", "currencyCode": "eur", "versions": [version]}, {"tariff.currency_code"}),
        ({"name": "T", "currencyCode": "EURO", "versions": [version]}, {"tariff.currency_code"}),
        ({"name": "T", "currencyCode": "EUR"}, {"tariff.versions"}),
        (
            {"name": "T", "currencyCode": "EUR", "versions": [{"flatPrice": 0.2}]},
            {"tariff.versions[0].effective_from"},
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [version | {"effectiveTo": "2025-01-01T00:00:00Z"}],
            },
            {"tariff.versions[0].effective_to"},
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [version, flat_version(0.1, "2026-06-01T00:00:00Z")],
            },
            {"tariff.versions[1].effective_from"},
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [
                    version
                    | {"flatPrice": -1, "standingChargePerDay": "NaN", "feedInPrice": "Infinity"}
                ],
            },
            {
                "tariff.versions[0].flat_price",
                "tariff.versions[0].standing_charge_per_day",
                "tariff.versions[0].feed_in_price",
            },
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [
                    version
                    | {
                        "windows": [
                            {
                                "price": -0.1,
                                "startMinute": -1,
                                "endMinute": 1441,
                                "dayTypes": ["DAY_TYPE_UNSPECIFIED"],
                                "months": [0, 13],
                            }
                        ]
                    }
                ],
            },
            {
                "tariff.versions[0].windows[0].price",
                "tariff.versions[0].windows[0].start_minute",
                "tariff.versions[0].windows[0].end_minute",
                "tariff.versions[0].windows[0].day_types[0]",
                "tariff.versions[0].windows[0].months[0]",
                "tariff.versions[0].windows[0].months[1]",
            },
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [
                    version
                    | {
                        "tiers": [
                            {"price": 0.1, "upTo": 100},
                            {"price": 0.2, "upTo": 50},
                            {"price": 0.3},
                            {"price": 0.4, "upTo": 500},
                        ]
                    }
                ],
            },
            {
                "tariff.versions[0].tiers[1].up_to",
                "tariff.versions[0].tiers[2].up_to",
                "tariff.versions[0].tiers[3].up_to",
            },
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [version | {"holidays": ["2026-02-30", "1 May", "2026-5-1"]}],
            },
            {
                "tariff.versions[0].holidays[0]",
                "tariff.versions[0].holidays[1]",
                "tariff.versions[0].holidays[2]",
            },
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [version | {"windows": [{"price": 0.1}] * 49}],
            },
            {"tariff.versions[0].windows"},
        ),
        (
            {
                "name": "T",
                "currencyCode": "EUR",
                "versions": [
                    {
                        "effectiveFrom": f"{2030 + i}-01-01T00:00:00Z",
                        "effectiveTo": f"{2031 + i}-01-01T00:00:00Z",
                    }
                    for i in range(51)
                ],
            },
            {"tariff.versions"},
        ),
    ]


async def test_bad_tariffs_are_refused_with_field_violations(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    for body, fields in bad_tariffs():
        response = await http.post("/v1/tariffs", headers=admin.headers, json=body)
        assert response.status_code == 400, (body, response.text)
        assert set(violations(response)) == fields, (body, violations(response))

    tariff = await create_tariff(http, admin, [TOU_VERSION])
    path = f"/v1/tariffs/{tariff['tariffId']}"
    cases: list[tuple[dict[str, str], dict[str, Any], set[str]]] = [
        ({"updateMask": "currency_code"}, {"currencyCode": "USD"}, {"update_mask"}),
        ({"updateMask": "name,color"}, {"name": "x"}, {"update_mask"}),
        ({"updateMask": "name"}, {"name": " "}, {"tariff.name"}),
        ({"updateMask": "versions"}, {"versions": []}, {"tariff.versions"}),
        ({}, {"currencyCode": "USD"}, {"tariff.currency_code"}),
        (
            {"updateMask": "versions"},
            {"versions": [TOU_VERSION, TOU_VERSION]},
            {"tariff.versions[1].effective_from"},
        ),
    ]
    for params, body, fields in cases:
        response = await http.patch(path, params=params, headers=admin.headers, json=body)
        assert response.status_code == 400, (params, body, response.text)
        assert set(violations(response)) == fields, (params, body, violations(response))
    assert (await http.get(path, headers=admin.headers)).json() == tariff

    for method, url, field in (
        ("GET", "/v1/tariffs/not-a-uuid", "tariff_id"),
        ("DELETE", "/v1/tariffs/not-a-uuid", "tariff_id"),
        ("PATCH", "/v1/tariffs/not-a-uuid", "tariff.tariff_id"),
    ):
        response = await http.request(method, url, headers=admin.headers, json={"name": "x"})
        assert response.status_code == 400, (method, response.text)
        assert field in violations(response)
    bad_pages: list[tuple[dict[str, Any], str]] = [
        ({"pageSize": -1}, "page_size"),
        ({"pageToken": "garbage"}, "page_token"),
    ]
    for params, field in bad_pages:
        response = await http.get("/v1/tariffs", params=params, headers=admin.headers)
        assert response.status_code == 400
        assert field in violations(response)


async def test_assignments_replace_per_commodity_and_direction(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    site = (await create_site(http, admin))["siteId"]
    first = await create_tariff(http, admin, [flat_version(0.2)], name="First")
    second = await create_tariff(http, admin, [flat_version(0.3)], name="Second")
    gas = await create_tariff(http, admin, [flat_version(0.1)], name="Gas")

    assignment = await assign_tariff(http, admin, site, first["tariffId"])
    assert assignment["siteId"] == site
    assert assignment["direction"] == "FLOW_DIRECTION_IMPORT"  # the default
    replacing = await assign_tariff(http, admin, site, second["tariffId"])
    assert replacing["assignmentId"] != assignment["assignmentId"]
    await assign_tariff(http, admin, site, gas["tariffId"], commodity="COMMODITY_GAS")
    export = await assign_tariff(
        http, admin, site, first["tariffId"], direction="FLOW_DIRECTION_EXPORT"
    )

    async def listed() -> list[tuple[str, str, str]]:
        response = await http.get(f"/v1/sites/{site}/tariffAssignments", headers=admin.headers)
        assert response.status_code == 200, response.text
        return sorted(
            (a["commodity"], a["direction"], a["tariffId"]) for a in response.json()["assignments"]
        )

    assert await listed() == sorted(
        [
            ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_IMPORT", second["tariffId"]),
            ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_EXPORT", first["tariffId"]),
            ("COMMODITY_GAS", "FLOW_DIRECTION_IMPORT", gas["tariffId"]),
        ]
    )
    # The replaced assignment is gone.
    gone = await http.delete(
        f"/v1/sites/{site}/tariffAssignments/{assignment['assignmentId']}", headers=admin.headers
    )
    assert gone.status_code == 404
    removed = await http.delete(
        f"/v1/sites/{site}/tariffAssignments/{export['assignmentId']}", headers=admin.headers
    )
    assert removed.status_code == 200, removed.text
    # Deleting a tariff deletes its assignments.
    deleted = await http.delete(f"/v1/tariffs/{gas['tariffId']}", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text
    assert await listed() == [
        ("COMMODITY_ELECTRICITY", "FLOW_DIRECTION_IMPORT", second["tariffId"])
    ]

    path = f"/v1/sites/{site}/tariffAssignments"
    for body, fields in (
        ({}, {"assignment.tariff_id", "assignment.commodity"}),
        ({"tariffId": "nope", "commodity": "COMMODITY_GAS"}, {"assignment.tariff_id"}),
        (
            {"tariffId": first["tariffId"], "commodity": "COMMODITY_UNSPECIFIED"},
            {"assignment.commodity"},
        ),
        (
            {"tariffId": first["tariffId"], "commodity": "COMMODITY_GAS", "direction": 7},
            {"assignment.direction"},
        ),
    ):
        response = await http.post(path, headers=admin.headers, json=body)
        assert response.status_code == 400, (body, response.text)
        assert set(violations(response)) == fields, (body, violations(response))
    for response in (
        await http.post(
            "/v1/sites/not-a-site/tariffAssignments",
            headers=admin.headers,
            json={"tariffId": first["tariffId"], "commodity": "COMMODITY_GAS"},
        ),
        await http.get("/v1/sites/not-a-site/tariffAssignments", headers=admin.headers),
        await http.delete(f"{path}/not-an-assignment", headers=admin.headers),
    ):
        assert response.status_code == 400, response.text
        assert violations(response)
    # A tariff or an assignment that does not exist.
    missing_tariff = await http.post(
        path,
        headers=admin.headers,
        json={"tariffId": "00000000-0000-4000-8000-000000000000", "commodity": "COMMODITY_GAS"},
    )
    assert missing_tariff.status_code == 404
    missing = await http.delete(
        f"{path}/00000000-0000-4000-8000-000000000000", headers=admin.headers
    )
    assert missing.status_code == 404


async def test_emission_factors(http: httpx.AsyncClient) -> None:
    admin = await register(http)
    march = await create_emission_factor(
        http, admin, 0.4, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"
    )
    april = await create_emission_factor(http, admin, 0.35, "2026-04-01T00:00:00Z")
    gas = await create_emission_factor(
        http, admin, 0.2, "2026-01-01T00:00:00Z", commodity="COMMODITY_GAS"
    )
    assert march["kgPerUnit"] == 0.4
    assert march["effectiveTo"] == "2026-04-01T00:00:00Z"
    assert "effectiveTo" not in april

    # Overlapping a factor of the same commodity is refused; another commodity is independent.
    overlapping = await http.post(
        "/v1/emission-factors",
        headers=admin.headers,
        json={
            "commodity": "COMMODITY_ELECTRICITY",
            "kgPerUnit": 0.3,
            "effectiveFrom": "2026-03-15T00:00:00Z",
            "effectiveTo": "2026-03-20T00:00:00Z",
        },
    )
    assert overlapping.status_code == 400, overlapping.text
    assert error_reason(overlapping) == "ERROR_REASON_FAILED_PRECONDITION"

    async def listed(params: dict[str, Any]) -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            response = await http.get(
                "/v1/emission-factors",
                params={**params, "pageSize": 1, "pageToken": token},
                headers=admin.headers,
            )
            assert response.status_code == 200, response.text
            found.extend(f["emissionFactorId"] for f in response.json()["emissionFactors"])
            token = response.json()["nextPageToken"]
            if not token:
                return found

    ids = [march["emissionFactorId"], april["emissionFactorId"]]
    assert await listed({}) == [*ids, gas["emissionFactorId"]]
    assert await listed({"commodity": "COMMODITY_ELECTRICITY"}) == ids
    assert await listed({"commodity": "COMMODITY_WATER"}) == []

    # A token belongs to its filter.
    page = await http.get("/v1/emission-factors?pageSize=1", headers=admin.headers)
    replayed = await http.get(
        "/v1/emission-factors",
        params={"commodity": "COMMODITY_GAS", "pageToken": page.json()["nextPageToken"]},
        headers=admin.headers,
    )
    assert replayed.status_code == 400
    assert "page_token" in violations(replayed)

    deleted = await http.delete(
        f"/v1/emission-factors/{march['emissionFactorId']}", headers=admin.headers
    )
    assert deleted.status_code == 200, deleted.text
    assert await listed({"commodity": "COMMODITY_ELECTRICITY"}) == ids[1:]
    again = await http.delete(
        f"/v1/emission-factors/{march['emissionFactorId']}", headers=admin.headers
    )
    assert again.status_code == 404

    for body, fields in (
        ({}, {"emission_factor.commodity", "emission_factor.effective_from"}),
        (
            {
                "commodity": "COMMODITY_GAS",
                "kgPerUnit": -1,
                "effectiveFrom": "2030-01-01T00:00:00Z",
            },
            {"emission_factor.kg_per_unit"},
        ),
        (
            {
                "commodity": "COMMODITY_GAS",
                "kgPerUnit": "NaN",
                "effectiveFrom": "2030-01-01T00:00:00Z",
            },
            {"emission_factor.kg_per_unit"},
        ),
        (
            {
                "commodity": "COMMODITY_GAS",
                "kgPerUnit": 0.1,
                "effectiveFrom": "2030-01-01T00:00:00Z",
                "effectiveTo": "2029-01-01T00:00:00Z",
            },
            {"emission_factor.effective_to"},
        ),
    ):
        response = await http.post("/v1/emission-factors", headers=admin.headers, json=body)
        assert response.status_code == 400, (body, response.text)
        assert set(violations(response)) == fields, (body, violations(response))
    for response in (
        await http.get("/v1/emission-factors", params={"pageSize": -1}, headers=admin.headers),
        await http.delete("/v1/emission-factors/nope", headers=admin.headers),
    ):
        assert response.status_code == 400, response.text
        assert violations(response)


async def test_other_organizations_resources_are_not_found(http: httpx.AsyncClient) -> None:
    admin = await register(http, "Tariff Owner")
    stranger = await register(http, "Someone Else")
    site = (await create_site(http, admin))["siteId"]
    their_site = (await create_site(http, stranger))["siteId"]
    tariff = await create_tariff(http, admin, [TOU_VERSION], name="Mine")
    their_tariff = await create_tariff(http, stranger, [TOU_VERSION], name="Theirs")
    assignment = await assign_tariff(http, admin, site, tariff["tariffId"])
    year = unique_year()
    factor = await create_emission_factor(http, admin, 0.4, f"{year}-01-01T00:00:00Z")

    tariff_path = f"/v1/tariffs/{tariff['tariffId']}"
    assignments = f"/v1/sites/{site}/tariffAssignments"
    for response in (
        await http.get(tariff_path, headers=stranger.headers),
        await http.patch(
            tariff_path, params={"updateMask": "name"}, headers=stranger.headers, json={"name": "x"}
        ),
        await http.delete(tariff_path, headers=stranger.headers),
        # My tariff on their site, their tariff on my site.
        await http.post(
            f"/v1/sites/{their_site}/tariffAssignments",
            headers=stranger.headers,
            json={"tariffId": tariff["tariffId"], "commodity": "COMMODITY_ELECTRICITY"},
        ),
        await http.post(
            assignments,
            headers=stranger.headers,
            json={"tariffId": their_tariff["tariffId"], "commodity": "COMMODITY_ELECTRICITY"},
        ),
        await http.get(assignments, headers=stranger.headers),
        await http.delete(f"{assignments}/{assignment['assignmentId']}", headers=stranger.headers),
        await http.delete(
            f"/v1/sites/{their_site}/tariffAssignments/{assignment['assignmentId']}",
            headers=stranger.headers,
        ),
        await http.delete(
            f"/v1/emission-factors/{factor['emissionFactorId']}", headers=stranger.headers
        ),
    ):
        assert response.status_code == 404, response.text
    # Each organization lists only its own; the same range is free in another organization.
    listed = await http.get("/v1/tariffs", headers=stranger.headers)
    assert [t["name"] for t in listed.json()["tariffs"]] == ["Theirs"]
    factors = await http.get("/v1/emission-factors", headers=stranger.headers)
    assert factors.json()["emissionFactors"] == []
    await create_emission_factor(http, stranger, 0.1, f"{year}-01-01T00:00:00Z")
    # Nothing of mine changed.
    assert (await http.get(tariff_path, headers=admin.headers)).json() == tariff
    mine = await http.get(assignments, headers=admin.headers)
    assert mine.json()["assignments"] == [assignment]
