"""Hourly consumption forecast: hour-of-week seasonal profile plus a linear trend.

Fit, on the last `weeks` weeks of hourly values:
  y(t) = profile[hour_of_week(t)] * (1 + growth * t) + noise,
a multiplicative trend (a growing site uses more at the same hours, keeping its shape),
alternating between the profile (the mean per local hour of the week of the values divided by
the trend) and the trend (least squares, linear in its two coefficients). The prediction
interval is the empirical 5th..95th percentile band of the in-sample residuals. The forecast
hours are the next local hours of the site (DST-aware: a 23-hour day has 23 of them).

Backtest: fit on everything before the last `days` days, forecast them, and report the mean
absolute percentage error (MAPE, over hours whose actual value is not zero) of the model and of
the seasonal-naive baseline (the same hour one week before, repeated for later weeks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from services.analytics.anomalies import HOURS_PER_WEEK, hour_of_week
from services.analytics.rollups import MS_PER_HOUR, Granularity, bucket_end


@dataclass(frozen=True)
class Forecast:
    starts_ms: list[int]
    values: list[float]
    lower: list[float]
    upper: list[float]


@dataclass(frozen=True)
class Backtest:
    """MAPE (as a fraction) of the model and of the seasonal-naive baseline over the last days."""

    model_mape: float
    naive_mape: float
    hours: int


@dataclass(frozen=True)
class _Model:
    profile: npt.NDArray[np.float64]  # 168 values, the level at origin_ms
    slope: float  # relative growth of the level per hour
    origin_ms: int
    low: float
    high: float

    def predict(self, starts_ms: Sequence[int], time_zone: str) -> npt.NDArray[np.float64]:
        t = (np.asarray(starts_ms, dtype=np.float64) - self.origin_ms) / MS_PER_HOUR
        keys = hour_of_week(starts_ms, time_zone)
        level = np.maximum(1.0 + self.slope * t, 0.0)
        result: npt.NDArray[np.float64] = self.profile[keys] * level
        return result


def _fit(starts_ms: Sequence[int], values: npt.ArrayLike, time_zone: str, weeks: int) -> _Model:
    keep = weeks * HOURS_PER_WEEK
    starts = list(starts_ms[-keep:])
    y = np.asarray(values, dtype=np.float64)[-keep:]
    if len(y) < HOURS_PER_WEEK:
        raise ValueError("a forecast needs at least one week of hourly values")
    keys = hour_of_week(starts, time_zone)
    t = (np.asarray(starts, dtype=np.float64) - starts[0]) / MS_PER_HOUR
    counts = np.bincount(keys, minlength=HOURS_PER_WEEK)
    level = np.ones_like(y)
    intercept, slope = 1.0, 0.0
    for _ in range(3):
        sums = np.bincount(keys, weights=y / level, minlength=HOURS_PER_WEEK)
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), float(np.mean(y / level)))
        seasonal = profile[keys]
        # y ~ seasonal * (intercept + slope * t): least squares, linear in (intercept, slope).
        design = np.column_stack([seasonal, seasonal * t])
        (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
        if intercept <= 0:  # degenerate (e.g. all zero): no trend
            intercept, slope = 1.0, 0.0
        level = intercept + slope * t
        level = np.where(level > 0, level, 1.0)
    residuals = y - profile[keys] * level
    low, high = np.percentile(residuals, [5.0, 95.0])
    return _Model(profile * intercept, float(slope / intercept), starts[0], float(low), float(high))


def next_hours(last_start_ms: int, horizon_hours: int, time_zone: str) -> list[int]:
    """The starts of the `horizon_hours` local hours after the hour starting at last_start_ms."""
    tz = ZoneInfo(time_zone)
    starts = []
    current = last_start_ms
    for _ in range(horizon_hours):
        current = bucket_end(current, Granularity.HOUR, tz)
        starts.append(current)
    return starts


def forecast(
    starts_ms: Sequence[int],
    values: npt.ArrayLike,
    time_zone: str,
    horizon_hours: int = 168,
    weeks: int = 4,
) -> Forecast:
    """Forecast the hours after a time-ordered hourly series (one value per local hour)."""
    model = _fit(starts_ms, values, time_zone, weeks)
    starts = next_hours(starts_ms[-1], horizon_hours, time_zone)
    predicted = model.predict(starts, time_zone)
    return Forecast(
        starts_ms=starts,
        values=[float(v) for v in predicted],
        lower=[float(v) for v in predicted + model.low],
        upper=[float(v) for v in predicted + model.high],
    )


def _mape(actual: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64]) -> float:
    nonzero = actual != 0
    if not nonzero.any():
        return float("nan")
    return float(np.mean(np.abs((actual[nonzero] - predicted[nonzero]) / actual[nonzero])))


def backtest(
    starts_ms: Sequence[int],
    values: npt.ArrayLike,
    time_zone: str,
    days: int = 14,
    weeks: int = 4,
) -> Backtest:
    """Model and seasonal-naive MAPE on the last `days` days of the series."""
    test = days * 24
    y = np.asarray(values, dtype=np.float64)
    if len(y) < test + HOURS_PER_WEEK:
        raise ValueError("a backtest needs at least a week of history before the test days")
    train_starts, test_starts = list(starts_ms[:-test]), list(starts_ms[-test:])
    train, actual = y[:-test], y[-test:]
    model = _fit(train_starts, train, time_zone, weeks)
    predicted = model.predict(test_starts, time_zone)
    last_week = train[-HOURS_PER_WEEK:]
    naive = np.resize(last_week, test)
    return Backtest(_mape(actual, predicted), _mape(actual, naive), test)
