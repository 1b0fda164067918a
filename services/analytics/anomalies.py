"""Anomaly detection on hourly consumption: a robust hour-of-week baseline.

Each hour is compared with the same local hour of the week (Monday 00:00 is 0, Sunday 23:00 is
167) in the previous `weeks` weeks: the median of those values is the expected value and their
median absolute deviation (MAD, scaled by 1.4826 to estimate a standard deviation) the spread.
score = (value - expected) / max(spread, floor), where the floor (a share of the expected value,
and an absolute minimum) keeps perfectly regular histories from flagging noise. An hour is an
anomaly when |score| exceeds the threshold and at least `min_history` previous weeks exist.
Medians make the baseline robust: an earlier anomaly barely moves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from services.analytics.rollups import MS_PER_SECOND

MAD_TO_SIGMA = 1.4826
HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class Anomaly:
    """An hour whose consumption is outside its baseline. score > 0: more than expected."""

    start_ms: int
    value: float
    expected: float
    score: float


def hour_of_week(starts_ms: Sequence[int], time_zone: str) -> npt.NDArray[np.int64]:
    """Local hour of the week (0 = Monday 00:00) of each instant."""
    tz = ZoneInfo(time_zone)
    out = np.empty(len(starts_ms), dtype=np.int64)
    for i, start in enumerate(starts_ms):
        local = datetime.fromtimestamp(start // MS_PER_SECOND, tz)
        out[i] = local.weekday() * 24 + local.hour
    return out


def baseline(
    starts_ms: Sequence[int], values: npt.ArrayLike, time_zone: str, weeks: int = 4
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """For each hour: the median and the scaled MAD of the same hour of the week over the
    previous `weeks` occurrences, and how many there were (NaN median without history)."""
    y = np.asarray(values, dtype=np.float64)
    keys = hour_of_week(starts_ms, time_zone)
    median = np.full(y.shape, np.nan)
    spread = np.full(y.shape, np.nan)
    count = np.zeros(y.shape, dtype=np.int64)
    for key in np.unique(keys):
        index = np.flatnonzero(keys == key)  # time order within one hour of the week
        series = y[index]
        n = len(series)
        # history[j, k] = the value k + 1 occurrences before occurrence j (NaN before the start)
        history = np.full((n, weeks), np.nan)
        for k in range(1, weeks + 1):
            history[k:, k - 1] = series[: n - k] if k < n else series[:0]
        available = np.sum(~np.isnan(history), axis=1)
        has = available > 0
        med = np.full(n, np.nan)
        mad = np.full(n, np.nan)
        if has.any():
            med[has] = np.nanmedian(history[has], axis=1)
            mad[has] = np.nanmedian(np.abs(history[has] - med[has, None]), axis=1)
        median[index] = med
        spread[index] = MAD_TO_SIGMA * mad
        count[index] = available
    return median, spread, count


def detect(
    starts_ms: Sequence[int],
    values: npt.ArrayLike,
    time_zone: str,
    *,
    weeks: int = 4,
    threshold: float = 4.0,
    min_history: int = 3,
    relative_floor: float = 0.05,
    absolute_floor: float = 1e-3,
) -> list[Anomaly]:
    """The anomalous hours of an hourly series (time-ordered, one value per local hour)."""
    y = np.asarray(values, dtype=np.float64)
    median, spread, count = baseline(starts_ms, values, time_zone, weeks)
    floor = np.maximum(relative_floor * np.abs(np.nan_to_num(median)), absolute_floor)
    scale = np.maximum(np.nan_to_num(spread), floor)
    score = (y - median) / scale
    flagged = (count >= min_history) & (np.abs(np.nan_to_num(score)) > threshold)
    return [
        Anomaly(
            start_ms=int(starts_ms[int(i)]),
            value=float(y[i]),
            expected=float(median[i]),
            score=float(score[i]),
        )
        for i in np.flatnonzero(flagged)
    ]
