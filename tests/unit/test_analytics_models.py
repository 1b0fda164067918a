"""Analytics anomalies and forecasts on generated hourly data."""

from __future__ import annotations

import math
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.analytics.anomalies import baseline, detect, hour_of_week
from services.analytics.forecast import backtest, forecast, next_hours
from services.analytics.rollups import Granularity, bucket_spans, local_midnight_ms

ZONE = "Europe/Berlin"
BERLIN = ZoneInfo(ZONE)


def hourly_series(
    first: date, weeks: int, seed: int, trend_per_week: float = 0.0, noise: float = 0.05
) -> tuple[list[int], np.ndarray]:
    """Local hours from `first` for `weeks` weeks: an office-like load (daytime peak on weekdays,
    low at weekends), multiplicative noise and an optional linear trend."""
    start = local_midnight_ms(first, BERLIN)
    spans = bucket_spans(start, start + weeks * 7 * 86_400_000, Granularity.HOUR, BERLIN)
    rng = np.random.default_rng(seed)
    starts = [s for s, _ in spans]
    values = np.empty(len(starts))
    for i, s in enumerate(starts):
        local = datetime.fromtimestamp(s / 1000, BERLIN)
        daytime = 8 <= local.hour < 18
        level = 10.0 + (30.0 if daytime and local.weekday() < 5 else 0.0)
        level += 5.0 * math.sin(2 * math.pi * local.hour / 24)
        level *= 1 + trend_per_week * i / 168
        values[i] = level * (1 + noise * rng.standard_normal())
    return starts, values


def test_hour_of_week_follows_local_time() -> None:
    monday = local_midnight_ms(date(2026, 3, 30), BERLIN)
    sunday_evening = monday - 3_600_000
    assert list(hour_of_week([monday, sunday_evening], ZONE)) == [0, 167]


def test_baseline_is_the_median_of_previous_weeks() -> None:
    starts, _ = hourly_series(date(2026, 1, 5), 5, seed=1)
    values = np.full(len(starts), 10.0)
    values[0], values[168], values[336] = 10.0, 40.0, 12.0  # the same hour of three weeks
    median, spread, count = baseline(starts, values, ZONE, weeks=4)
    assert count[504] == 3
    assert median[504] == 12.0
    assert spread[504] == pytest.approx(1.4826 * 2.0)
    assert math.isnan(median[0])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_injected_anomalies_are_found_with_high_precision_and_recall(seed: int) -> None:
    starts, values = hourly_series(date(2026, 1, 5), 12, seed=seed)
    rng = np.random.default_rng(100 + seed)
    # 40 anomalies after the first four weeks: spikes (x2 to x4) and drops (to 10-40 %).
    injected = set(rng.choice(np.arange(4 * 168, len(values)), size=40, replace=False).tolist())
    for i in injected:
        values[i] *= rng.uniform(2.0, 4.0) if rng.random() < 0.5 else rng.uniform(0.1, 0.4)
    found = {starts.index(a.start_ms) for a in detect(starts, values, ZONE)}
    found_after = {i for i in found if i >= 4 * 168}
    true_positives = len(found_after & injected)
    precision = true_positives / max(len(found_after), 1)
    recall = true_positives / len(injected)
    print(f"anomalies seed={seed}: precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.9
    assert recall >= 0.9


def test_anomaly_carries_expected_value_and_score() -> None:
    starts, values = hourly_series(date(2026, 1, 5), 6, seed=4, noise=0.0)
    values[5 * 168 + 10] = 500.0
    anomalies = detect(starts, values, ZONE)
    assert [a.start_ms for a in anomalies] == [starts[5 * 168 + 10]]
    assert anomalies[0].expected == pytest.approx(values[4 * 168 + 10])
    assert anomalies[0].score > 4


def test_forecast_hours_are_local_hours_across_dst() -> None:
    last = local_midnight_ms(date(2026, 3, 29), BERLIN) - 3_600_000  # 23:00 on Saturday
    hours = next_hours(last, 24, ZONE)
    assert datetime.fromtimestamp(hours[23] / 1000, BERLIN).isoformat() == (
        "2026-03-30T00:00:00+02:00"  # 24 hours after 23:00 on a 23-hour day
    )


def test_forecast_beats_seasonal_naive_on_a_trending_series() -> None:
    starts, values = hourly_series(date(2026, 1, 5), 10, seed=7, trend_per_week=0.03)
    result = backtest(starts, values, ZONE)
    print(
        f"forecast backtest ({result.hours} h): model MAPE={result.model_mape:.3%} "
        f"seasonal-naive MAPE={result.naive_mape:.3%}"
    )
    assert result.model_mape < result.naive_mape
    assert result.model_mape < 0.08
    prediction = forecast(starts, values, ZONE, horizon_hours=168)
    assert len(prediction.values) == 168
    assert all(
        lo <= v <= hi
        for lo, v, hi in zip(prediction.lower, prediction.values, prediction.upper, strict=True)
    )
    # The next Monday 10:00 continues the trend above the last Monday 10:00's level.
    monday_ten = next(
        i
        for i, s in enumerate(prediction.starts_ms)
        if datetime.fromtimestamp(s / 1000, BERLIN).weekday() == 0
        and datetime.fromtimestamp(s / 1000, BERLIN).hour == 10
    )
    assert prediction.values[monday_ten] > np.mean(
        values[-168:][hour_of_week(starts[-168:], ZONE) == 10]
    )


def test_stationary_series_forecast_is_as_good_as_naive() -> None:
    starts, values = hourly_series(date(2026, 1, 5), 8, seed=9)
    result = backtest(starts, values, ZONE)
    print(f"stationary backtest: model MAPE={result.model_mape:.3%} naive={result.naive_mape:.3%}")
    assert result.model_mape <= result.naive_mape * 1.05
