"""Shared steps for the analytics service's end-to-end tests: tariffs, emission factors,
readings and the consumption they become."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx

from tests.e2e.helpers import Account, eventually

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


# --- readings with known consumption, queries and waiting (issue 6's query tests) ---------------

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
T = TypeVar("T")


def parse_ms(text: str) -> int:
    """An RFC 3339 time (as the JSON mapping prints Timestamps) as epoch ms."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def counter(amounts: Sequence[float], first: float = 100.0) -> list[float]:
    """The values a cumulative register shows when it consumes `amounts` one after another:
    len(amounts) + 1 values, starting at `first`."""
    values = [first]
    for amount in amounts:
        values.append(values[-1] + amount)
    return values


async def write_quarter_amounts(
    http: httpx.AsyncClient,
    account: Account,
    meter_id: str,
    starts: Sequence[int],
    amounts: Sequence[float],
    *,
    scale: float = 1.0,
    first: float = 100.0,
) -> None:
    """A cumulative 15-minute register read at every start and once after the last, consuming
    amounts[i] in the quarter hour starting at starts[i] (values written in units of
    1/scale: scale 1000 for a Wh register reporting kWh amounts)."""
    values = [value * scale for value in counter(amounts, first)]
    await write_readings(http, account, meter_id, [*starts, starts[-1] + QUARTER_MS], values)


def sum_by(
    starts: Sequence[int], amounts: Sequence[float], key: Callable[[int], int]
) -> dict[int, float]:
    """Amounts (at instants) summed per key(instant), e.g. per bucket start."""
    groups: dict[int, list[float]] = defaultdict(list)
    for start, amount in zip(starts, amounts, strict=True):
        groups[key(start)].append(amount)
    return {k: math.fsum(v) for k, v in sorted(groups.items())}


def local_hour_start(moment_ms: int, zone: ZoneInfo) -> int:
    """The start of the local clock hour holding an instant (its own offset: the repeated hour
    of an October night is two hours)."""
    local = datetime.fromtimestamp(moment_ms / 1000, zone)
    return ms(local.replace(minute=0, second=0, microsecond=0))


def local_day_start(moment_ms: int, zone: ZoneInfo = BERLIN) -> int:
    return local_midnight(local_day(moment_ms, zone), zone)


def utc_day_start(moment_ms: int) -> int:
    return moment_ms - moment_ms % DAY_MS


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


async def get_ok(
    http: httpx.AsyncClient, account: Account, path: str, **params: Any
) -> dict[str, Any]:
    response = await http.get(path, params=params, headers=account.headers)
    assert response.status_code == 200, f"GET {path} {params}: {response.text}"
    body: dict[str, Any] = response.json()
    return body


async def site_consumption(
    http: httpx.AsyncClient,
    account: Account,
    site_id: str,
    start_ms: int,
    end_ms: int,
    granularity: str = "GRANULARITY_DAY",
    **params: Any,
) -> list[dict[str, Any]]:
    """The site's series over [start_ms, end_ms)."""
    body = await get_ok(
        http,
        account,
        f"/v1/sites/{site_id}/consumption",
        startTime=iso(start_ms),
        endTime=iso(end_ms),
        granularity=granularity,
        **params,
    )
    return with_points(body.get("series", []))


async def org_consumption(
    http: httpx.AsyncClient,
    account: Account,
    start_ms: int,
    end_ms: int,
    granularity: str = "GRANULARITY_DAY",
    **params: Any,
) -> list[dict[str, Any]]:
    body = await get_ok(
        http,
        account,
        "/v1/consumption",
        startTime=iso(start_ms),
        endTime=iso(end_ms),
        granularity=granularity,
        **params,
    )
    return with_points(body.get("series", []))


def with_points(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for one in series:
        one.setdefault("points", [])
    return series


def only_series(series: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(series) == 1, f"expected one series, got {len(series)}: {series}"
    return series[0]


def values_by_start(series: dict[str, Any], field: str = "value") -> dict[int, Any]:
    """A series' points as start (ms) → field (None when unset)."""
    return {parse_ms(p["startTime"]): p.get(field) for p in series["points"]}


def same_values(actual: dict[int, Any], expected: dict[int, float], rel: float = 1e-9) -> bool:
    return set(actual) == set(expected) and all(
        close(actual[k], expected[k], rel) for k in expected
    )


async def wait_for(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    wait_seconds: float = 60,
) -> T:
    """Polls fetch() until done(result) holds (the rollups are kept asynchronously) and returns
    that result; on timeout fails showing the last result."""
    last: list[T] = []

    async def check() -> bool:
        last[:] = [await fetch()]
        return done(last[0])

    try:
        await eventually(check, wait_seconds=wait_seconds)
    except TimeoutError:
        shown = repr(last[0])[:3000] if last else "nothing"
        raise AssertionError(f"{what}: not reached in {wait_seconds}s; last: {shown}") from None
    return last[0]
