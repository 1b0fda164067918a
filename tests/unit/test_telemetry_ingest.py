"""Unit tests of the group-commit writer's in-memory steps."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format, timestamp_pb2

from energymesh.telemetry.v1 import events_pb2
from services.telemetry.ingest import (
    FUTURE_TOLERANCE_MS,
    SMALL_BATCH,
    MeterRules,
    classify,
    classify_one,
    readings_committed_json,
    repeats,
)


def reference(meters: list[int], times: list[int]) -> tuple[list[bool], list[int]]:
    """Repeated (same meter and time as an earlier reading) and the first reading's position."""
    first: dict[tuple[int, int], int] = {}
    repeated, leader = [], []
    for position, key in enumerate(zip(meters, times, strict=True)):
        repeated.append(key in first)
        leader.append(first.setdefault(key, position))
    return repeated, leader


@pytest.mark.parametrize("seed", range(200))
def test_repeats_matches_a_plain_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    owners: list[int] = []
    meters: list[int] = []
    times: list[int] = []
    for batch in range(int(rng.integers(1, 6))):
        size, meter = int(rng.integers(0, 8)), int(rng.integers(0, 3))
        owners += [batch] * size
        meters += [meter] * size
        if rng.random() < 0.5:  # increasing times, the usual batch
            times += sorted(rng.choice(100, size, replace=False).tolist())
        else:  # out of order, repeats inside the batch
            times += rng.integers(0, 6, size).tolist()
    batch_meters = dict(zip(owners, meters, strict=True))
    one_batch_per_meter = len(set(batch_meters.values())) == len(batch_meters)

    repeated, leader = repeats(
        np.array(meters, dtype=np.int32),
        np.array(times, dtype=np.int64),
        np.array(owners, dtype=np.int32),
        one_batch_per_meter,
    )

    assert (repeated.tolist(), leader.tolist()) == reference(meters, times)


RULES = (
    None,
    MeterRules(register_type=1),
    MeterRules(register_type=1, rollover_value=500.0),
    MeterRules(register_type=2),
    MeterRules(register_type=3),
)


@pytest.mark.parametrize("seed", range(100))
def test_classify_agrees_with_classify_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    now_ms, horizon_ms = 1_800_000_000_000, 86_400_000
    size = int(rng.integers(SMALL_BATCH + 1, 60))
    times = now_ms - rng.integers(-FUTURE_TOLERANCE_MS // 2, horizon_ms // 2, size)
    values = rng.uniform(0, 400, size)
    if seed % 2:  # most batches are all valid; spoil every other one here and there
        spoiled = rng.integers(0, size, 3)
        times[spoiled[0]] = now_ms + 2 * FUTURE_TOLERANCE_MS if seed % 4 == 1 else 0
        values[spoiled[1]] = [np.nan, np.inf, -1.0, 600.0, 2e15][seed % 5]
        values[spoiled[2]] = -0.0
    for rules in RULES:
        reasons = classify(times, values, rules, now_ms, horizon_ms)
        expected = [
            classify_one(int(t), float(v), rules, now_ms, horizon_ms)
            for t, v in zip(times.tolist(), values.tolist(), strict=True)
        ]
        assert reasons.tolist() == expected


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)


@pytest.mark.parametrize(
    ("first_ms", "last_ms", "batch_ids"),
    [
        (1_800_000_000_000, 1_800_000_060_000, ["a-1", "a-2"]),
        (1_800_000_000_123, 1_800_000_000_123, []),
        (0, 999, ['quote " and backslash \\', "ünïcode"]),
        (253_402_300_799_999, 253_402_300_799_999, ["late"]),
    ],
)
def test_readings_committed_json_is_the_messages_proto3_json(
    first_ms: int, last_ms: int, batch_ids: list[str]
) -> None:
    event = events_pb2.ReadingsCommitted(
        organization_id="org",
        meter_id="meter",
        first_time=timestamp_pb2.Timestamp(
            seconds=first_ms // 1000, nanos=first_ms % 1000 * 1_000_000
        ),
        last_time=timestamp_pb2.Timestamp(
            seconds=last_ms // 1000, nanos=last_ms % 1000 * 1_000_000
        ),
        count=7,
        batch_ids=batch_ids,
    )
    expected = json_format.MessageToJson(event, indent=None).encode()

    assert readings_committed_json("org", "meter", first_ms, last_ms, 7, batch_ids) == expected
