"""Shared steps for the analytics service's end-to-end tests: tariffs, emission factors,
readings and the consumption they become."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.e2e.helpers import Account

QUARTER_MS = 900_000
BERLIN = ZoneInfo("Europe/Berlin")
MAX_BATCH = 10_000
_days = itertools.count()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_midnight(day: date, zone: ZoneInfo = BERLIN) -> int:
    """ms of a local midnight (the days used here all have one)."""
    return ms(datetime.combine(day, time(0), tzinfo=zone))


def local_day(moment_ms: int, zone: ZoneInfo = BERLIN) -> date:
    return datetime.fromtimestamp(moment_ms / 1000, zone).date()


def quarter_starts(first: date, last: date, zone: ZoneInfo = BERLIN) -> list[int]:
    """Every quarter hour of the local days first..last (inclusive): real elapsed time, so a
    23-hour day has 92 and a 25-hour day 100."""
    start, end = local_midnight(first, zone), local_midnight(last + timedelta(days=1), zone)
    return list(range(start, end, QUARTER_MS))


def unique_year() -> int:
    """A year no other caller of this process got, for ranges that must not overlap."""
    return 2100 + next(_days)


async def create_tariff(
    http: httpx.AsyncClient, account: Account, versions: Sequence[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    body = {"name": "Tariff", "currencyCode": "EUR", "versions": list(versions), **fields}
    response = await http.post("/v1/tariffs", headers=account.headers, json=body)
    assert response.status_code == 200, response.text
    tariff: dict[str, Any] = response.json()
    return tariff


def flat_version(
    price: float, start: str = "2000-01-01T00:00:00Z", **fields: Any
) -> dict[str, Any]:
    return {"effectiveFrom": start, "flatPrice": price, **fields}


async def assign_tariff(
    http: httpx.AsyncClient,
    account: Account,
    site_id: str,
    tariff_id: str,
    commodity: str = "COMMODITY_ELECTRICITY",
    direction: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"tariffId": tariff_id, "commodity": commodity}
    if direction is not None:
        body["direction"] = direction
    response = await http.post(
        f"/v1/sites/{site_id}/tariffAssignments", headers=account.headers, json=body
    )
    assert response.status_code == 200, response.text
    assignment: dict[str, Any] = response.json()
    return assignment


async def create_emission_factor(
    http: httpx.AsyncClient,
    account: Account,
    kg_per_unit: float,
    start: str,
    end: str | None = None,
    commodity: str = "COMMODITY_ELECTRICITY",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "commodity": commodity,
        "kgPerUnit": kg_per_unit,
        "effectiveFrom": start,
    }
    if end is not None:
        body["effectiveTo"] = end
    response = await http.post("/v1/emission-factors", headers=account.headers, json=body)
    assert response.status_code == 200, response.text
    factor: dict[str, Any] = response.json()
    return factor


async def write_readings(
    http: httpx.AsyncClient,
    account: Account,
    meter_id: str,
    times: Sequence[int],
    values: Sequence[float],
) -> None:
    for start in range(0, len(times), MAX_BATCH):
        response = await http.post(
            f"/v1/meters/{meter_id}/readings:batchCreate",
            headers=account.headers,
            json={
                "timeUnixMs": list(times[start : start + MAX_BATCH]),
                "values": list(values[start : start + MAX_BATCH]),
            },
        )
        assert response.status_code == 200, response.text


async def consumption(
    http: httpx.AsyncClient,
    account: Account,
    meter_id: str,
    start_ms: int,
    end_ms: int,
    granularity: str = "GRANULARITY_DAY",
) -> dict[str, Any]:
    """The meter's series over [start_ms, end_ms)."""
    response = await http.get(
        f"/v1/meters/{meter_id}/consumption",
        params={"startTime": iso(start_ms), "endTime": iso(end_ms), "granularity": granularity},
        headers=account.headers,
    )
    assert response.status_code == 200, response.text
    series: dict[str, Any] = response.json()["series"]
    series.setdefault("points", [])
    return series
