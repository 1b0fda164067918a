"""Anomalies and forecasts end to end: five weeks of generated 15-minute readings with a weekly
pattern and a few injected anomalous hours are found by the rollup consumer (precision and
recall reported), listed newest first, published once each on analytics.anomaly.detected and
removed when a late reading makes the hour normal; a weekly-periodic meter is forecast as its
pattern, and a forecast needs a week of history."""

from __future__ import annotations

import json
import math
import random
from datetime import date, datetime
from typing import Any

import httpx
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from tests.e2e.analytics_steps import (
    BERLIN,
    HOUR_MS,
    QUARTER_MS,
    close,
    consumption,
    counter,
    get_ok,
    iso,
    local_midnight,
    parse_ms,
    sum_by,
    wait_for,
    write_quarter_amounts,
    write_readings,
)
from tests.e2e.device_steps import create_meter, create_site
from tests.e2e.helpers import Account, find_event, register

ANOMALY_DETECTED = "analytics.anomaly.detected"
WEEK_MS = 7 * 24 * HOUR_MS
WAIT = 90
# Monday 4 May 2026, Berlin: five weeks without a DST change.
FIRST_DAY = date(2026, 5, 4)


def profile(moment_ms: int) -> float:
    """Consumption (kWh per hour) by local hour of the week: an office, busy on weekdays."""
    local = datetime.fromtimestamp(moment_ms / 1000, BERLIN)
    weekday, hour = local.weekday(), local.hour
    if weekday >= 5:
        return 0.7 + 0.05 * (hour % 3)
    return (2.4 if 8 <= hour < 18 else 0.8) + 0.1 * weekday + 0.02 * hour


async def anomaly_messages(nats_client: Client, meter_id: str) -> list[Msg]:
    """Every analytics.anomaly.detected message stored so far about the meter."""
    subscription = await nats_client.jetstream().subscribe(
        ANOMALY_DETECTED, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[Msg] = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=1)
            except TimeoutError:
                return found
            if anomaly_fields(message).get("meterId") == meter_id:
                found.append(message)
    finally:
        await subscription.unsubscribe()


def anomaly_fields(message: Msg) -> dict[str, Any]:
    """The anomaly in an event: the payload itself or its `anomaly` member."""
    payload: dict[str, Any] = json.loads(message.data)
    nested = payload.get("anomaly")
    return nested if isinstance(nested, dict) else payload


async def list_anomalies(
    http: httpx.AsyncClient, account: Account, **params: Any
) -> list[dict[str, Any]]:
    """Every page of GET /v1/anomalies."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await get_ok(http, account, "/v1/anomalies", pageToken=token, **params)
        found.extend(page.get("anomalies", []))
        token = page.get("nextPageToken", "")
        if not token:
            return found


async def test_injected_anomalies_are_found_listed_and_published_once(
    http: httpx.AsyncClient, nats_client: Client
) -> None:
    admin = await register(http, "Analytics Anomalies")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    meter = (await create_meter(http, admin, site))["meterId"]
    rng = random.Random(6)
    lo = local_midnight(FIRST_DAY)
    hi = lo + 5 * WEEK_MS
    starts = list(range(lo, hi, QUARTER_MS))
    amounts = [profile(t) / 4 * (1 + rng.uniform(-0.02, 0.02)) for t in starts]
    # Week 5: three hours far above their usual level, one far below.
    week5 = lo + 4 * WEEK_MS
    injected = {
        week5 + 1 * 24 * HOUR_MS + 10 * HOUR_MS: 3.0,  # Tuesday 10:00
        week5 + 2 * 24 * HOUR_MS + 12 * HOUR_MS: 0.1,  # Wednesday noon: almost nothing
        week5 + 3 * 24 * HOUR_MS + 3 * HOUR_MS: 4.0,  # Thursday 03:00
        week5 + 5 * 24 * HOUR_MS + 15 * HOUR_MS: 2.5,  # Saturday 15:00
    }
    for i, t in enumerate(starts):
        factor = injected.get(t - t % HOUR_MS)
        if factor is not None:
            amounts[i] *= factor
    await write_quarter_amounts(http, admin, meter, starts, amounts)
    hourly = sum_by(starts, amounts, lambda t: t - t % HOUR_MS)

    def expected_of(start: int) -> float:
        """The median of the same hour in the four weeks before."""
        return float(np.median([hourly[start - k * WEEK_MS] for k in range(1, 5)]))

    # The rollups of the whole range, then the anomalies among them.
    await wait_for(
        lambda: consumption(http, admin, meter, lo, hi, "GRANULARITY_WEEK"),
        lambda s: (
            len(s["points"]) == 5
            and close(math.fsum(p["value"] for p in s["points"]), math.fsum(amounts))
        ),
        "five weeks rolled up",
        WAIT,
    )
    anomalies = await wait_for(
        lambda: list_anomalies(http, admin, meterId=meter),
        lambda found: set(injected) <= {parse_ms(a["startTime"]) for a in found},
        "the injected anomalies listed",
        WAIT,
    )
    found = {parse_ms(a["startTime"]) for a in anomalies}
    true_positives = len(found & set(injected))
    precision = true_positives / len(found)
    recall = true_positives / len(injected)
    print(f"anomalies: {len(found)} found, precision {precision:.2f}, recall {recall:.2f}")
    assert recall == 1
    assert precision >= 0.8

    # Newest first, with the numbers of the hour and its baseline.
    assert [a["startTime"] for a in anomalies] == sorted(
        (a["startTime"] for a in anomalies), reverse=True
    )
    for anomaly in anomalies:
        start = parse_ms(anomaly["startTime"])
        if start not in injected:
            continue
        assert anomaly["meterId"] == meter
        assert anomaly["siteId"] == site
        assert anomaly["endTime"] == iso(start + HOUR_MS)
        assert anomaly["unit"] == "kWh"
        assert anomaly["anomalyId"]
        assert anomaly["detectTime"]
        assert close(anomaly["value"], hourly[start], 1e-6)
        assert close(anomaly["expected"], expected_of(start), 1e-6)
        assert (anomaly["score"] > 4) == (injected[start] > 1)
        assert (anomaly["score"] < -4) == (injected[start] < 1)

    # Filters and pages.
    by_site = await list_anomalies(http, admin, siteId=site)
    assert [a["anomalyId"] for a in by_site] == [a["anomalyId"] for a in anomalies]
    in_pages = await list_anomalies(http, admin, pageSize=1)
    assert [a["anomalyId"] for a in in_pages] == [a["anomalyId"] for a in anomalies]
    window_lo, window_hi = week5 + 2 * 24 * HOUR_MS, week5 + 4 * 24 * HOUR_MS
    windowed = await list_anomalies(http, admin, startTime=iso(window_lo), endTime=iso(window_hi))
    assert {parse_ms(a["startTime"]) for a in windowed} == {
        start for start in found if window_lo <= start < window_hi
    }
    stranger = await register(http, "Other Energy")
    assert await list_anomalies(http, stranger) == []
    response = await http.get("/v1/anomalies", params={"meterId": meter}, headers=stranger.headers)
    assert response.status_code == 404, response.text

    # Each published once, with a Nats-Msg-Id.
    messages = await wait_for(
        lambda: anomaly_messages(nats_client, meter),
        lambda published: len(published) >= len(anomalies),
        "one event per anomaly",
        WAIT,
    )
    published = [anomaly_fields(message) for message in messages]
    assert sorted(parse_ms(p["startTime"]) for p in published) == sorted(found)
    for message, fields in zip(messages, published, strict=True):
        assert message.headers is not None
        assert message.headers.get("Nats-Msg-Id")
        assert "value" in fields
        assert "expected" in fields

    # The readings' event delivered again recomputes the same hours: nothing new is published.
    event = await find_event(
        nats_client, "telemetry.readings.committed", lambda e: e.get("meterId") == meter
    )
    await nats_client.jetstream().publish(
        "telemetry.readings.committed",
        json.dumps({**event, "firstTime": iso(lo), "lastTime": iso(hi)}).encode(),
    )
    sentinel_value = counter(amounts)[-1] + 0.5
    await write_readings(http, admin, meter, [hi + QUARTER_MS], [sentinel_value])
    await wait_for(
        lambda: consumption(http, admin, meter, hi, hi + HOUR_MS, "GRANULARITY_HOUR"),
        lambda s: len(s["points"]) == 1 and close(s["points"][0]["value"], 0.5),
        "a later reading counted (the redelivered event was applied before it)",
        WAIT,
    )
    assert len(await anomaly_messages(nats_client, meter)) == len(messages)
    assert {a["anomalyId"] for a in await list_anomalies(http, admin, meterId=meter)} == {
        a["anomalyId"] for a in anomalies
    }


async def test_a_late_reading_that_makes_the_hours_normal_removes_their_anomalies(
    http: httpx.AsyncClient,
) -> None:
    """A machine runs every day from 07:50 to 08:00. In week 5 the 08:00 reading is missing, so
    that run is spread evenly over 07:50-08:10: 07:00 looks low and 08:00 high. The reading
    arriving late puts the run back where it was, and both hours are normal again."""
    admin = await register(http, "Analytics Anomalies")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    # Read every 10 minutes; expected every 15, so a single missing reading is no gap.
    meter = (await create_meter(http, admin, site))["meterId"]
    lo = local_midnight(FIRST_DAY)
    hi = lo + 5 * WEEK_MS
    step = 10 * 60_000
    times = list(range(lo, hi + 1, step))
    amounts = [
        1.0 / 6
        + (6.0 if datetime.fromtimestamp(t / 1000, BERLIN).strftime("%H:%M") == "07:50" else 0)
        for t in times[:-1]
    ]
    values = counter(amounts)
    missing = times.index(lo + 4 * WEEK_MS + 2 * 24 * HOUR_MS + 8 * HOUR_MS)  # Wednesday 08:00
    await write_readings(
        http,
        admin,
        meter,
        times[:missing] + times[missing + 1 :],
        values[:missing] + values[missing + 1 :],
    )
    seven, eight = times[missing] - HOUR_MS, times[missing]
    anomalies = await wait_for(
        lambda: list_anomalies(http, admin, meterId=meter),
        lambda found: {parse_ms(a["startTime"]) for a in found} == {seven, eight},
        "07:00 (low) and 08:00 (high) anomalous",
        WAIT,
    )
    scores = {parse_ms(a["startTime"]): a["score"] for a in anomalies}
    assert scores[seven] < -4
    assert scores[eight] > 4

    await write_readings(http, admin, meter, [times[missing]], [values[missing]])
    await wait_for(
        lambda: consumption(http, admin, meter, seven, eight + HOUR_MS, "GRANULARITY_HOUR"),
        lambda s: [round(p["value"], 9) for p in s["points"]] == [7.0, 1.0],
        "the hours recomputed with the late reading",
        WAIT,
    )
    await wait_for(
        lambda: list_anomalies(http, admin, meterId=meter),
        lambda found: found == [],
        "the anomalies removed",
        WAIT,
    )


# --- forecasts ---------------------------------------------------------------------------------


def weekly(moment_ms: int) -> float:
    """The office profile with a bump every fifth hour of the (local) week."""
    local = datetime.fromtimestamp(moment_ms / 1000, BERLIN)
    return profile(moment_ms) + 0.3 * ((local.weekday() * 24 + local.hour) % 5 == 0)


async def hourly_meter(
    http: httpx.AsyncClient, admin: Account, site: str, first: date, days: int
) -> tuple[str, int]:
    """An hourly INTERVAL meter with `days` days of a strictly weekly pattern from `first`;
    returns it and the end of its last hour."""
    meter = (
        await create_meter(
            http, admin, site, registerType="REGISTER_TYPE_INTERVAL", expectedInterval="3600s"
        )
    )["meterId"]
    lo = local_midnight(first)
    ends = [lo + (i + 1) * HOUR_MS for i in range(days * 24)]
    await write_readings(http, admin, meter, ends, [weekly(end - HOUR_MS) for end in ends])
    return meter, ends[-1]


async def test_a_weekly_periodic_meter_is_forecast_as_its_pattern(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http, "Analytics Forecasts")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    # Four weeks where the pattern repeats exactly (weekly() repeats every 168 hours).
    lo = local_midnight(FIRST_DAY)
    assert all(weekly(t) == weekly(t + WEEK_MS) for t in range(lo, lo + WEEK_MS, HOUR_MS))
    meter, end = await hourly_meter(http, admin, site, FIRST_DAY, 28)

    async def forecast(**params: Any) -> httpx.Response:
        return await http.get(f"/v1/meters/{meter}/forecast", params=params, headers=admin.headers)

    async def ready() -> dict[str, Any]:
        response = await forecast()
        return response.json() if response.status_code == 200 else {"error": response.text}

    result = await wait_for(
        ready,
        lambda r: r.get("historyHours") == 672,
        "a forecast fitted on four weeks",
        WAIT,
    )
    points = result["points"]
    print(
        f"forecast: backtest MAPE {result['backtestMape']:.2e}, "
        f"seasonal naive {result['seasonalNaiveMape']:.2e}"
    )
    assert result["meterId"] == meter
    assert result["unit"] == "kWh"
    assert len(points) == 168
    assert [parse_ms(p["startTime"]) for p in points] == [end + i * HOUR_MS for i in range(168)]
    for point in points:
        assert point["lower"] <= point["value"] <= point["upper"]
        assert math.isclose(point["value"], weekly(parse_ms(point["startTime"])), rel_tol=1e-6)
    assert result["backtestHours"] == 336
    assert result["backtestMape"] < 1e-6
    assert result["seasonalNaiveMape"] < 1e-6

    short = await forecast(horizonHours=48)
    assert short.status_code == 200, short.text
    assert [p["startTime"] for p in short.json()["points"]] == [p["startTime"] for p in points[:48]]
    longest = await forecast(horizonHours=720)
    assert longest.status_code == 200, longest.text
    assert len(longest.json()["points"]) == 720
    for horizon in (721, -1):
        assert (await forecast(horizonHours=horizon)).status_code == 400


async def test_a_forecast_needs_a_week_of_history_and_backtests_after_three(
    http: httpx.AsyncClient,
) -> None:
    admin = await register(http, "Analytics Forecasts")
    site = (await create_site(http, admin, timeZone="Europe/Berlin"))["siteId"]
    ten_days, ten_end = await hourly_meter(http, admin, site, FIRST_DAY, 10)
    three_days, three_end = await hourly_meter(http, admin, site, FIRST_DAY, 3)

    async def last_hours() -> list[dict[str, Any]]:
        return [
            await consumption(http, admin, meter, end - HOUR_MS, end, "GRANULARITY_HOUR")
            for meter, end in ((ten_days, ten_end), (three_days, three_end))
        ]

    await wait_for(
        last_hours,
        lambda found: all(len(s["points"]) == 1 and s["points"][0]["value"] > 0 for s in found),
        "the last hours rolled up",
        WAIT,
    )

    result = await get_ok(http, admin, f"/v1/meters/{ten_days}/forecast")
    assert len(result["points"]) == 168
    assert result["points"][0]["startTime"] == iso(ten_end)
    assert result["historyHours"] == 240
    assert result["backtestHours"] == 0
    assert result["backtestMape"] == 0
    assert result["seasonalNaiveMape"] == 0

    response = await http.get(f"/v1/meters/{three_days}/forecast", headers=admin.headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 9  # FAILED_PRECONDITION
