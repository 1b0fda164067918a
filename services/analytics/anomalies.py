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
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from services.analytics.rollups import MS_PER_SECOND

MAD_TO_SIGMA = 1.4826
# Hour starts, ms since the epoch.
Times = Sequence[int] | npt.NDArray[np.int64]
HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class Anomaly:
    """An hour whose consumption is outside its baseline. score > 0: more than expected."""

    start_ms: int
    value: float
    expected: float
    score: float


def hour_of_week(starts_ms: Times, time_zone: str) -> npt.NDArray[np.int64]:
    """Local hour of the week (0 = Monday 00:00) of each instant."""
    return np.fromiter(
        (_hour_of_week(int(start), time_zone) for start in starts_ms),
        dtype=np.int64,
        count=len(starts_ms),
    )


@lru_cache(maxsize=262_144)
def _hour_of_week(start_ms: int, time_zone: str) -> int:
    # Cached: every meter of a zone asks about the same hours.
    local = datetime.fromtimestamp(start_ms // MS_PER_SECOND, ZoneInfo(time_zone))
    return local.weekday() * 24 + local.hour


def baseline(
    starts_ms: Times, values: npt.ArrayLike, time_zone: str, weeks: int = 4
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """For each hour: the median and the scaled MAD of the same hour of the week over the
    previous `weeks` occurrences, and how many of them have a value (NaN values count as
    missing; the median is NaN without history)."""
    y = np.asarray(values, dtype=np.float64)
    keys = hour_of_week(starts_ms, time_zone)
    n = len(y)
    # Sorted by hour of the week, then time: an occurrence k places back is k entries back
    # within its key's run.
    order = np.lexsort((np.arange(n), keys))
    run_start = np.searchsorted(keys[order], keys[order], side="left")
    rank = np.arange(n) - run_start
    history = np.full((n, weeks), np.nan)
    for k in range(1, weeks + 1):
        later = np.flatnonzero(rank >= k)
        history[order[later], k - 1] = y[order[later - k]]
    count = np.sum(~np.isnan(history), axis=1).astype(np.int64)
    median = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    has = count > 0
    if has.any():
        median[has] = np.nanmedian(history[has], axis=1)
        spread[has] = MAD_TO_SIGMA * np.nanmedian(np.abs(history[has] - median[has, None]), axis=1)
    return median, spread, count


def detect(
    starts_ms: Times,
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
